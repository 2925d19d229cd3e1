//! An S3 bucket (or an S3-compatible store) as the export target, through
//! `object_store`: credentials from the standard AWS variables and chain
//! (environment keys, web identity, container and instance metadata),
//! `AWS_ENDPOINT_URL` for other stores (path-style requests), plain http only
//! to a loopback endpoint, whichever variable names it. Objects get `Content-Type: application/json` and
//! `Cache-Control: public, max-age=<--max-age>`. A PUT replaces an object
//! whole, so readers never see a part.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

pub(crate) struct S3Target {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    cache_control: String,
}

impl S3Target {
    pub(crate) fn new(bucket: &str, prefix: &str, max_age: Duration) -> Result<S3Target, String> {
        // reqwest's rustls is built without a provider of its own: ring, as everywhere here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        // AWS_ENDPOINT_URL, AWS_ENDPOINT or AWS_ENDPOINT_URL_S3 (which wins): the
        // endpoint the store will use, whichever variable named it.
        let endpoint = [AmazonS3ConfigKey::S3Endpoint, AmazonS3ConfigKey::Endpoint]
            .iter()
            .find_map(|key| builder.get_config_value(key));
        let loopback = endpoint
            .as_deref()
            .and_then(|e| e.parse::<http::Uri>().ok())
            .and_then(|u| u.host().map(str::to_owned))
            .is_some_and(|h| is_loopback(&h));
        if let Some(endpoint) = &endpoint
            && endpoint.starts_with("http://")
            && !loopback
        {
            return Err(format!(
                "S3 endpoint {endpoint}: plain http is allowed only to a loopback endpoint; use https"
            ));
        }
        // object_store would sign for us-east-1 and S3 would answer every request
        // with a redirect: say so at start-up instead.
        if endpoint.is_none() && builder.get_config_value(&AmazonS3ConfigKey::Region).is_none() {
            return Err(format!(
                "S3 bucket {bucket}: no region; set AWS_REGION to the bucket's region"
            ));
        }
        // Whatever AWS_ALLOW_HTTP says.
        builder = builder.with_allow_http(loopback);
        // Path-style: S3-compatible stores rarely have a DNS name per bucket.
        builder = builder.with_config(AmazonS3ConfigKey::VirtualHostedStyleRequest, "false");
        let store = builder.build().map_err(|e| format!("S3 bucket {bucket}: {e}"))?;
        Ok(S3Target {
            store,
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            cache_control: format!("public, max-age={}", max_age.as_secs()),
        })
    }

    pub(crate) fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    pub(crate) async fn get(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        match self.store.get(&self.path(name)).await {
            Ok(got) => got.bytes().await.map(|b| Some(b.to_vec())).map_err(redacted),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(redacted(e)),
        }
    }

    pub(crate) async fn put(&self, name: &str, body: Vec<u8>) -> std::io::Result<()> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/json".into());
        attributes.insert(Attribute::CacheControl, self.cache_control.clone().into());
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&self.path(name), PutPayload::from(body), options)
            .await
            .map(|_| ())
            .map_err(redacted)
    }
}

/// An S3 error as it may be logged and shown in /status: object_store quotes
/// the response body, and S3's XML for a signature mismatch carries the access
/// key id and the string that was signed. Only its `<Code>` is kept.
fn redacted(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(redact(&error.to_string()))
}

fn redact(message: &str) -> String {
    let Some(start) = message.find("<?xml").or_else(|| message.find("<Error>")) else {
        return message.to_owned();
    };
    let body = &message[start..];
    let code = body
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code);
    let head = message[..start].trim_end();
    match code {
        Some(code) => format!("{head} (S3 error code {code})"),
        None => format!("{head} (S3 error body withheld)"),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_error_body_is_cut_to_its_code() {
        let raw = "Client error with status 403 Forbidden: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
            <Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIAEXAMPLE</AWSAccessKeyId>\
            <StringToSign>AWS4-HMAC-SHA256 secret-ish</StringToSign></Error>";
        let out = redact(raw);
        assert_eq!(
            out,
            "Client error with status 403 Forbidden: (S3 error code SignatureDoesNotMatch)"
        );
        assert!(!out.contains("AKIA"));
        let no_code = redact("status 500: <Error><Message>x AKIAEXAMPLE</Message></Error>");
        assert_eq!(no_code, "status 500: (S3 error body withheld)");
        assert_eq!(redact("connection refused"), "connection refused");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for host in ["127.0.0.1", "localhost", "[::1]", "127.9.0.1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.1", "s3.amazonaws.com", "minio.internal", "[fe80::1]"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
