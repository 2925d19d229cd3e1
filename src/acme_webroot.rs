//! `--acme-webroot DIR`: certbot's `--webroot` challenge files, served on the
//! plain listener (even with `--redirect-http`: a CA asks over http) from
//! `DIR/.well-known/acme-challenge/`, and from nowhere else.

use std::path::{Path, PathBuf};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::body::{self, ProxyBody};

const PREFIX: &str = "/.well-known/acme-challenge/";
/// A key authorization is ~90 bytes; anything much bigger is not one.
const MAX_FILE: u64 = 64 << 10;

#[derive(Debug, Clone)]
pub(crate) struct Webroot {
    /// `DIR/.well-known/acme-challenge`, as given (resolved per request, so
    /// certbot may create it after the proxy starts).
    challenges: PathBuf,
}

impl Webroot {
    pub(crate) fn new(dir: &Path) -> Webroot {
        Webroot {
            challenges: dir.join(".well-known").join("acme-challenge"),
        }
    }

    /// The answer to a request under `/.well-known/acme-challenge/`, or `None`
    /// for any other path (which goes on as usual).
    pub(crate) async fn respond<B>(&self, req: &Request<B>) -> Option<Response<ProxyBody>> {
        let token = match token_of(req)? {
            Ok(token) => token,
            Err(refused) => return Some(refused),
        };
        Some(answer(req, self.read(token).await))
    }

    /// The file's content, if it is a regular file inside the challenge folder
    /// once every symlink is resolved.
    async fn read(&self, token: &str) -> Option<Vec<u8>> {
        let folder = tokio::fs::canonicalize(&self.challenges).await.ok()?;
        let file = tokio::fs::canonicalize(self.challenges.join(token)).await.ok()?;
        if file.parent() != Some(folder.as_path()) {
            return None;
        }
        let meta = tokio::fs::metadata(&file).await.ok()?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            return None;
        }
        tokio::fs::read(&file).await.ok()
    }
}

/// The challenge token a request asks for; `None` for any other path, an
/// answer for a method other than GET/HEAD or a malformed token.
fn token_of<B>(req: &Request<B>) -> Option<Result<&str, Response<ProxyBody>>> {
    let token = req.uri().path().strip_prefix(PREFIX)?;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = body::text_response(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD here\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(Err(resp));
    }
    if !is_token(token) {
        return Some(Err(answer(req, None)));
    }
    Some(Ok(token))
}

/// The challenge's content as plain text, or 404.
fn answer<B>(req: &Request<B>, found: Option<Vec<u8>>) -> Response<ProxyBody> {
    let Some(content) = found else {
        return body::text_response(StatusCode::NOT_FOUND, "no such challenge\n");
    };
    let mut resp = Response::new(match *req.method() {
        Method::HEAD => body::empty(),
        _ => body::full(content.clone()),
    });
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(content.len()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `--acme-domain` with HTTP-01: the key authorization `lookup` holds for the
/// token, if it holds one (else `None`: `--acme-webroot` may have it).
pub(crate) fn respond_with<B>(
    req: &Request<B>,
    lookup: impl FnOnce(&str) -> Option<String>,
) -> Option<Response<ProxyBody>> {
    let found = lookup(token_of(req)?.ok()?)?;
    Some(answer(req, Some(found.into_bytes())))
}

/// RFC 8555 §8.3: a token is base64url. Nothing else is looked up, so no `..`,
/// `/`, `%2F` or `\` can name a file outside the folder.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_base64url_only() {
        assert!(is_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in ["", "..", "a/b", "a%2Fb", "a\\b", "a.b", "x y", &"a".repeat(300)] {
            assert!(!is_token(bad), "{bad}");
        }
    }

    async fn get(root: &Webroot, path: &str) -> Option<(StatusCode, Vec<u8>)> {
        use http_body_util::BodyExt;
        let req = Request::get(path).body(()).unwrap();
        let resp = root.respond(&req).await?;
        let status = resp.status();
        Some((status, resp.into_body().collect().await.unwrap().to_bytes().to_vec()))
    }

    #[tokio::test]
    async fn serves_challenge_files_and_nothing_outside_them() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join(".well-known/acme-challenge");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("tok-1_A"), "tok-1_A.thumbprint").unwrap();
        std::fs::write(dir.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), folder.join("leak")).unwrap();
        std::fs::create_dir(folder.join("sub")).unwrap();
        let root = Webroot::new(dir.path());
        assert_eq!(
            get(&root, "/.well-known/acme-challenge/tok-1_A").await,
            Some((StatusCode::OK, b"tok-1_A.thumbprint".to_vec()))
        );
        for path in ["leak", "sub", "missing", "..%2Fsecret", "%2e%2e"] {
            let (status, _) = get(&root, &format!("/.well-known/acme-challenge/{path}"))
                .await
                .unwrap();
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
        assert!(get(&root, "/.well-known/openid-configuration").await.is_none());
        assert!(get(&root, "/secret").await.is_none());
    }
}
