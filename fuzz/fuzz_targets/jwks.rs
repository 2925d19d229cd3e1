//! See `gitlab_oidc_proxy::fuzz::jwks` for the input format and what is asserted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gitlab_oidc_proxy::fuzz::jwks::run(data));
