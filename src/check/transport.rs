//! Steps 1 and 3's transport half: did the answer come over https, in time,
//! with status 200, on a chain STS accepts (publicly rooted, in order, no extras)?

use std::time::SystemTime;

use http::{StatusCode, header};

use super::fetch::{FetchError, Fetched, LIMIT, Trust};
use super::report::Step;
use crate::tls::chain;

/// Records on `step` how fetching `url` went; the answer when it is a 200. The
/// chain is judged when `chain` (step 3 on the issuer's host saw it in step 1).
pub(super) fn judge<'f>(
    step: &mut Step,
    url: &str,
    outcome: &'f Result<Fetched, FetchError>,
    chain: bool,
) -> Option<&'f Fetched> {
    let fetched = match outcome {
        Ok(f) => f,
        Err(FetchError::Timeout) => {
            step.fail(
                format!("GET {url}: no complete answer within {} s", LIMIT.as_secs()),
                "STS gives up after 5 s: find what makes GitLab slow (gitlab-oidc-proxy answers from memory)",
            );
            return None;
        }
        Err(e) => {
            step.fail(
                format!("GET {url}: {e}"),
                "make the URL reachable from the internet over https (port 443)",
            );
            return None;
        }
    };
    step.saw(format!(
        "GET {url}: {} in {} ms",
        fetched.status,
        fetched.elapsed.as_millis()
    ));
    if let Some(seen) = fetched.chain.as_ref().filter(|_| chain) {
        judge_chain(step, &seen.ders, &seen.trust);
    }
    if fetched.status.is_redirection() {
        let to = fetched
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nowhere");
        step.fail(
            format!(
                "{url} redirects ({}) to {to}; STS does not follow redirects",
                fetched.status
            ),
            "serve the document at this URL itself (an authentication-protected GitLab redirects to sign-in)",
        );
        return None;
    }
    if fetched.status != StatusCode::OK {
        step.fail(
            format!("{url} answered {}, not 200", fetched.status),
            "the document must answer 200 to anonymous requests",
        );
        return None;
    }
    Some(fetched)
}

fn judge_chain(step: &mut Step, ders: &[rustls_pki_types::CertificateDer<'static>], trust: &Trust) {
    match chain::layout(ders, SystemTime::now()) {
        Ok(layout) => {
            step.saw(format!("chain sent: {}", layout.sent.join(", ")));
            if layout.path != layout.sent {
                step.saw(format!("the leaf's chain among them: {}", layout.path.join(" → ")));
            }
            for problem in layout.problems {
                step.fail(
                    problem,
                    "serve the leaf first, then each intermediate followed by its issuer, and nothing else",
                );
            }
            for note in layout.notes {
                step.warn(note, "renew the certificate before it expires");
            }
        }
        Err(e) => step.fail(
            format!("the certificate chain cannot be read: {e}"),
            "serve a valid certificate chain",
        ),
    }
    match trust {
        Trust::Public => step.saw("chain trusted by the public roots"),
        Trust::OnlyWithCa => step.warn(
            "the chain is trusted only with --ca, not by the public roots that STS uses",
            "use a certificate from a public CA (e.g. Let's Encrypt) where STS connects",
        ),
        Trust::Untrusted(why) => step.fail(
            format!("the chain is not publicly trusted: {why}"),
            "use a certificate from a public CA that covers the host, sent with its intermediates",
        ),
    }
}
