//! Tokens shaped like NPM's (a three-part JWT whose payload carries `attrs.id`, `scope`, `iat`,
//! `exp`), signed with a per-double key. NPM signs RS256 with a key pair made at first start; the
//! double signs with SHA-256 over key and content: clients must treat the token as opaque anyway.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub(crate) struct Claims {
    pub user_id: i64,
    pub scope: Vec<String>,
    /// Issue order, used by `expire_tokens` to expire every token issued so far.
    pub serial: u64,
    pub iat: i64,
    pub exp: i64,
}

pub(crate) enum TokenError {
    /// Not a token this NPM signed (jsonwebtoken's JsonWebTokenError: NPM answers 500).
    Garbage,
    /// Past `exp`.
    Expired,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub(crate) fn b64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let chars = chunk.len() + 1;
        for k in 0..chars {
            out.push(B64[((n >> (18 - 6 * k)) & 63) as usize] as char);
        }
    }
    out
}

pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn signature(key: &[u8], content: &str) -> String {
    let mut h = Sha256::new();
    h.update(key);
    h.update(content.as_bytes());
    b64url(&h.finalize())
}

pub(crate) fn sign(key: &[u8], c: &Claims) -> String {
    let header = b64url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = json!({
        "iss": "api",
        "attrs": {"id": c.user_id},
        "scope": c.scope,
        "jti": format!("{:x}{}", c.serial, &uuid::Uuid::new_v4().simple().to_string()[..8]),
        "serial": c.serial,
        "iat": c.iat,
        "exp": c.exp,
    });
    let content = format!("{header}.{}", b64url(payload.to_string().as_bytes()));
    let sig = signature(key, &content);
    format!("{content}.{sig}")
}

pub(crate) fn verify(key: &[u8], token: &str, now: i64) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Garbage);
    };
    if signature(key, &format!("{h}.{p}")) != s {
        return Err(TokenError::Garbage);
    }
    let payload: Value = b64url_decode(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Garbage)?;
    let claims = Claims {
        user_id: payload["attrs"]["id"].as_i64().ok_or(TokenError::Garbage)?,
        scope: payload["scope"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        serial: payload["serial"].as_u64().ok_or(TokenError::Garbage)?,
        iat: payload["iat"].as_i64().ok_or(TokenError::Garbage)?,
        exp: payload["exp"].as_i64().ok_or(TokenError::Garbage)?,
    };
    // jsonwebtoken: expired when now >= exp.
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// NPM's `parseDatePeriod`: `^([0-9]+)(y|Q|M|w|d|h|m|s|ms)$` (moment units), in seconds.
pub(crate) fn parse_period(expr: &str) -> Option<i64> {
    let digits: String = expr.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    let unit = &expr[digits.len()..];
    let secs = match unit {
        "y" => 365 * 86_400,
        "Q" => 91 * 86_400,
        "M" => 30 * 86_400,
        "w" => 7 * 86_400,
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        "ms" => return Some(n / 1000),
        _ => return None,
    };
    n.checked_mul(secs)
}
