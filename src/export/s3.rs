//! An S3 bucket (or an S3-compatible store) as the export target, through
//! `object_store`: credentials from the standard AWS variables and chain
//! (environment keys, web identity, container and instance metadata),
//! `AWS_ENDPOINT_URL` for other stores (path-style requests), plain http only
//! to a loopback endpoint. Objects get `Content-Type: application/json` and
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
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            let loopback = endpoint
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_owned))
                .is_some_and(|h| is_loopback(&h));
            builder = builder.with_endpoint(endpoint).with_allow_http(loopback);
        }
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
            Ok(got) => got
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(std::io::Error::other),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(std::io::Error::other(e)),
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
            .map_err(std::io::Error::other)
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
    fn plain_http_only_to_loopback() {
        for host in ["127.0.0.1", "localhost", "[::1]", "127.9.0.1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.1", "s3.amazonaws.com", "minio.internal", "[fe80::1]"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
