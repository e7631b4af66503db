//! Outbound HTTP of HTTP functions, as the operator's policy file grants it.
//!
//! Nothing is granted by default. A grant names functions and the hosts
//! they may call. Every request is checked against it; every redirect is
//! a new request that the guest makes and that is checked again. The
//! host's own connector resolves the name, checks each address, and
//! connects only to an address that passed. Loopback, private, link-local,
//! shared and other special addresses are refused unless the grant says
//! `private_addresses = true`. So a granted name that resolves to
//! `127.0.0.1` or `169.254.169.254` reaches nothing. Every request has
//! timeouts and a cap on the response body.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::http;
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::policy::FunctionGrant;

/// One host a function may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) private_addresses: bool,
}

/// Reads one `hosts` entry of a grant.
pub(super) fn parse_host(entry: &str, private_addresses: bool) -> anyhow::Result<HostRule> {
    let authority: http::uri::Authority = entry
        .parse()
        .with_context(|| format!("`{entry}` is not a host or host:port"))?;
    if entry.contains('@') || entry.contains('/') {
        bail!("`{entry}` is not a host or host:port");
    }
    Ok(HostRule {
        host: normalise(authority.host()),
        port: authority.port_u16().unwrap_or(80),
        private_addresses,
    })
}

/// Hosts compare without case, a trailing dot or IPv6 brackets.
fn normalise(host: &str) -> String {
    host.trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// The `wasi:http` hooks of one HTTP function's store.
#[derive(Default)]
pub struct OutboundPolicy {
    grant: Option<Arc<FunctionGrant>>,
}

impl OutboundPolicy {
    pub fn new(grant: Option<Arc<FunctionGrant>>) -> Self {
        Self { grant }
    }
}

type Sent = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let grant = self.grant.clone();
        Box::new(async move {
            let Some(grant) = grant else {
                tracing::debug!(uri = %request.uri(), "outbound HTTP denied: nothing is granted");
                return Err(Error::HttpRequestDenied);
            };
            let response = send(&grant, request).await?;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Sends a request that the grant allows, to an address that passed.
async fn send(
    grant: &FunctionGrant,
    request: http::Request<WasiBody>,
) -> wasmtime_wasi_http::Result<http::Response<WasiBody>> {
    let uri = request.uri().clone();
    if uri.scheme_str() != Some("http") {
        return Err(Error::InternalError(Some(
            "only http:// is supported for outbound requests on this host".to_owned(),
        )));
    }
    let host = normalise(uri.host().ok_or(Error::HttpRequestUriInvalid)?);
    let port = uri.port_u16().unwrap_or(80);
    let Some(rule) = grant
        .hosts
        .iter()
        .find(|rule| rule.host == host && rule.port == port)
    else {
        tracing::debug!(%host, port, "outbound HTTP denied: not granted");
        return Err(Error::HttpRequestDenied);
    };
    let limits = grant.limits;
    let connect_timeout = Duration::from_millis(limits.connect_timeout_ms);
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(
            connect_timeout,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| Error::DnsTimeout)?
        .map_err(|_| Error::DnsError {
            rcode: None,
            info_code: None,
        })?
        .collect(),
    };
    let allowed: Vec<SocketAddr> = addresses
        .into_iter()
        .filter(|address| rule.private_addresses || is_public(address.ip()))
        .collect();
    if allowed.is_empty() {
        tracing::debug!(%host, "outbound HTTP denied: resolves only to non-public addresses");
        return Err(Error::DestinationIpProhibited);
    }
    let stream = connect(&allowed, connect_timeout).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::from)?;
    // The connection is driven apart; it ends with the response's body.
    tokio::spawn(connection);
    let (mut parts, body) = request.into_parts();
    // Origin form on the wire: the host is in the Host header.
    parts.uri = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(
        Duration::from_millis(limits.first_byte_timeout_ms),
        sender.send_request(http::Request::from_parts(parts, body)),
    )
    .await
    .map_err(|_| Error::HttpResponseTimeout)?
    .map_err(Error::from)?;
    let cap = limits.max_response_bytes;
    Ok(response.map(|body| {
        http_body_util::Limited::new(body, cap)
            .map_err(move |e| match e.downcast::<hyper::Error>() {
                Ok(hyper) => Error::from(*hyper),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    Error::HttpResponseBodySize(Some(cap as u64))
                }
                Err(e) => Error::InternalError(Some(e.to_string())),
            })
            .boxed_unsync()
    }))
}

/// The first of `addresses` that accepts a connection in time.
async fn connect(
    addresses: &[SocketAddr],
    timeout: Duration,
) -> wasmtime_wasi_http::Result<tokio::net::TcpStream> {
    let mut last = Error::ConnectionRefused;
    for address in addresses {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(_)) => last = Error::ConnectionRefused,
            Err(_) => last = Error::ConnectionTimeout,
        }
    }
    Err(last)
}

/// Whether an address is an ordinary public one: not loopback, private,
/// link-local (where cloud metadata lives), shared, multicast, documentation
/// or otherwise reserved. IPv6 forms of an IPv4 address are judged as that.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., high, low] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_not_public() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
