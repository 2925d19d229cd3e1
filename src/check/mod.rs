//! `gitlab-oidc-proxy check ISSUER_URL`: walks the path AWS STS walks to verify
//! a GitLab ID token (discovery over https, the document, the key set, their
//! caching, the token, many jobs at once) and says which step fails and how to
//! fix it. Works against any GitLab, with or without this proxy in front.

mod burst;
mod caching;
mod document;
mod fetch;
mod report;
mod token;
mod transport;

use std::net::SocketAddr;
use std::time::SystemTime;

use http::Uri;
use rustls_pki_types::CertificateDer;

use fetch::{Fetched, Fetcher};
pub use report::Report;
use report::Step;

/// What to check, as the command line gave it.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// As typed: STS compares it byte for byte.
    pub issuer: String,
    /// The ID token (read from `--token FILE|-`), never printed.
    pub token: Option<String>,
    pub audience: Option<String>,
    pub burst: Option<u32>,
    /// `--ca`: roots trusted besides the public ones (then a warning).
    pub ca: Vec<CertificateDer<'static>>,
    /// `--connect-to`: connect here for the issuer's host instead of resolving it.
    pub connect_to: Option<SocketAddr>,
}

/// `--token FILE|-`: the token, trimmed; why not, in one line (exit 2).
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("--token -: cannot read stdin: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("--token {}: {e}", path.display()))?
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("--token {}: empty", path.display()));
    }
    Ok(token.to_owned())
}

/// `--ca PEM`: its certificates; why not, in one line (exit 2).
pub fn read_ca(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--ca {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("--ca {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

const TITLES: [&str; 6] = [
    "discovery over https within 5 s, on a publicly trusted chain",
    "the discovery document",
    "the key set at jwks_uri",
    "caching (the parallel-jobs failure)",
    "the ID token",
    "many jobs at once",
];

/// The whole walk. Only setting problems (an unusable `--ca`) are errors.
pub async fn run(settings: &CheckSettings) -> Result<Report, String> {
    let issuer = settings.issuer.as_str();
    let uri: Uri = issuer.parse().map_err(|_| format!("{issuer}: not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("{issuer}: no host"))?.to_owned();
    let fetcher = Fetcher::new(&settings.ca, settings.connect_to.map(|a| (host, a)))?;
    let mut report = Report {
        issuer: issuer.to_owned(),
        ..Report::default()
    };

    let mut step = Step::new(1, TITLES[0]);
    judge_issuer_url(&mut step, issuer, &uri);
    let discovery_url = format!("{issuer}/.well-known/openid-configuration");
    let discovery = match discovery_url.parse::<Uri>() {
        Ok(url) => fetcher.get(&url).await,
        Err(_) => Err(fetch::FetchError::BadUrl(discovery_url.clone())),
    };
    let discovery_ok = transport::judge(&mut step, &discovery_url, &discovery, true);
    report.steps.push(step);

    let jwks_uri = match discovery_ok {
        Some(f) => {
            let mut step = Step::new(2, TITLES[1]);
            let uri = document::judge_discovery(&mut step, issuer, &f.body);
            report.steps.push(step);
            uri
        }
        None => {
            report.steps.push(Step::skipped(2, TITLES[1], "no discovery document"));
            None
        }
    };

    let (keys_answer, keys) = match &jwks_uri {
        Some(url) => {
            let mut step = Step::new(3, TITLES[2]);
            let answer = fetcher.get(url).await;
            // The issuer's own host: its chain was judged in step 1.
            let other_host = url.host() != uri.host();
            let keys = transport::judge(&mut step, &url.to_string(), &answer, other_host)
                .and_then(|f| document::judge_keys(&mut step, &f.body));
            report.steps.push(step);
            (answer.ok(), keys)
        }
        None => {
            report.steps.push(Step::skipped(3, TITLES[2], "no jwks_uri"));
            (None, None)
        }
    };

    report.steps.push(caching_step(discovery_ok, keys_answer.as_ref()));
    token_step(&mut report, settings, &fetcher, keys.as_deref(), jwks_uri.as_ref()).await;

    match (settings.burst, &jwks_uri) {
        (Some(n), Some(jwks)) if discovery_ok.is_some() => {
            let mut step = Step::new(6, TITLES[5]);
            let urls = [discovery_url.parse().expect("fetched once already"), jwks.clone()];
            burst::judge(&mut step, &fetcher, &urls, n).await;
            report.steps.push(step);
        }
        (Some(_), _) => report.steps.push(Step::skipped(6, TITLES[5], "no documents to fetch")),
        (None, _) => report.steps.push(Step::skipped(6, TITLES[5], "no --burst")),
    }
    Ok(report)
}

/// What STS refuses in the issuer URL itself.
fn judge_issuer_url(step: &mut Step, issuer: &str, uri: &Uri) {
    if uri.scheme_str() != Some("https") {
        step.fail(
            format!("the issuer {issuer} is not https; STS accepts only https issuers"),
            "serve GitLab over https (external_url https://…), e.g. with gitlab-oidc-proxy --tls-listen in front",
        );
    }
    if let Some(port) = uri.port_u16() {
        step.fail(
            format!("the issuer has a port ({port}); STS accepts none"),
            "serve the issuer on port 443 (gitlab-oidc-proxy --tls-listen 0.0.0.0:443 or --oidc-listen behind 443)",
        );
    }
    if issuer.contains('?') || issuer.contains('#') {
        step.fail(
            "the issuer has a query or a fragment",
            "use GitLab's external_url as is: scheme, host and path only",
        );
    }
}

fn caching_step(discovery: Option<&Fetched>, keys: Option<&Fetched>) -> Step {
    let mut answers = Vec::new();
    answers.extend(discovery.map(|f| ("discovery", &f.headers)));
    answers.extend(keys.filter(|f| f.status.is_success()).map(|f| ("key set", &f.headers)));
    if answers.is_empty() {
        return Step::skipped(4, TITLES[3], "no answers to judge");
    }
    let mut step = Step::new(4, TITLES[3]);
    caching::judge(&mut step, &answers);
    step
}

async fn token_step(
    report: &mut Report,
    settings: &CheckSettings,
    fetcher: &Fetcher,
    keys: Option<&[crate::oidc::jwks::Jwk]>,
    jwks_uri: Option<&Uri>,
) {
    let Some(raw) = &settings.token else {
        report.steps.push(Step::skipped(5, TITLES[4], "no --token"));
        return;
    };
    let mut step = Step::new(5, TITLES[4]);
    let decoded = match token::decode(raw) {
        Ok(d) => d,
        Err(why) => {
            step.fail(
                why,
                "pass the job's ID token: echo \"$AWS_ID_TOKEN\" | gitlab-oidc-proxy check URL --token -",
            );
            report.steps.push(step);
            return;
        }
    };
    let expect = token::Expect {
        issuer: &settings.issuer,
        audience: settings.audience.as_deref(),
        now: SystemTime::now(),
    };
    let found = token::judge(&mut step, &decoded, keys.unwrap_or_default(), &expect);
    if !found && let (Some(kid), Some(jwks_uri)) = (decoded.kid(), jwks_uri) {
        look_elsewhere(&mut step, fetcher, &settings.issuer, jwks_uri, kid).await;
    }
    report.claims = Some(token::claims_report(&decoded.claims, &settings.issuer));
    report.trust_policy = Some(token::trust_policy(
        &decoded.claims,
        &settings.issuer,
        settings.audience.as_deref(),
    ));
    report.steps.push(step);
}

/// The old-GitLab problem: `jwks_uri` names `/oauth/discovery/keys`, which on
/// 14.4 and before lacks the CI key that `/-/jwks` has. Is the `kid` there?
async fn look_elsewhere(step: &mut Step, fetcher: &Fetcher, issuer: &str, jwks_uri: &Uri, kid: &str) {
    let other = if jwks_uri.path().ends_with("/-/jwks") {
        format!("{issuer}/oauth/discovery/keys")
    } else {
        format!("{issuer}/-/jwks")
    };
    let Ok(url) = other.parse::<Uri>() else {
        return;
    };
    let Ok(answer) = fetcher.get(&url).await else {
        return;
    };
    let holds = answer.status.is_success()
        && crate::oidc::jwks::parse(&answer.body)
            .is_ok_and(|keys| keys.iter().any(|k| crate::oidc::jwks::kid(k) == kid));
    if holds {
        step.fail(
            format!("kid {kid} is in {other}, which jwks_uri does not name (GitLab 14.4 and before)"),
            "put gitlab-oidc-proxy in front (its jwks_uri names both key sets united), or upgrade GitLab",
        );
    } else {
        step.saw(format!(
            "kid {kid} is not in {other} either: the token is from another GitLab or an older key"
        ));
    }
}
