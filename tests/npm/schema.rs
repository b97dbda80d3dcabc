//! The JSON-schema subset NPM validates request bodies with, evaluated the way NPM's AJV v8
//! instance does it (`allErrors: true`, `coerceTypes: true`): every error is collected, in AJV's
//! keyword order, and joined with ", " into one message such as
//! `data must have required property 'forward_port', data/forward_port must be <= 65535`.
//! Coercion rewrites the data in place ("8080" → 8080, "true"/1 → true, 5 → "5", null → "").
//!
//! The schemas themselves are transcribed from NPM's OpenAPI document
//! (`npm-openapi-v2.15.1.json`, `/nginx/proxy-hosts` POST and `/{hostID}` PUT, `/tokens` POST).

use regex::Regex;
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Str,
    Int,
    Bool,
    Obj,
    Arr,
    Null,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Int => "integer",
            Ty::Bool => "boolean",
            Ty::Obj => "object",
            Ty::Arr => "array",
            Ty::Null => "null",
        }
    }

    fn matches(self, v: &Value) -> bool {
        match self {
            Ty::Str => v.is_string(),
            Ty::Int => v
                .as_f64()
                .is_some_and(|n| n.is_finite() && n.fract() == 0.0),
            Ty::Bool => v.is_boolean(),
            Ty::Obj => v.is_object(),
            Ty::Arr => v.is_array(),
            Ty::Null => v.is_null(),
        }
    }
}

/// One schema node. Only the keywords NPM's proxy-host and token schemas use.
#[derive(Default)]
pub(crate) struct S {
    types: Vec<Ty>,
    enum_: Option<Vec<Value>>,
    any_of: Vec<S>,
    maximum: Option<i64>,
    minimum: Option<i64>,
    max_len: Option<usize>,
    min_len: Option<usize>,
    pattern: Option<(&'static str, Regex)>,
    max_items: Option<usize>,
    min_items: Option<usize>,
    unique: bool,
    items: Option<Box<S>>,
    min_props: Option<usize>,
    required: Vec<&'static str>,
    no_additional: bool,
    properties: Vec<(&'static str, S)>,
}

pub(crate) fn ty(t: Ty) -> S {
    S {
        types: vec![t],
        ..S::default()
    }
}

impl S {
    pub(crate) fn types(mut self, t: &[Ty]) -> S {
        self.types = t.to_vec();
        self
    }
    pub(crate) fn one_of_values(mut self, v: &[&str]) -> S {
        self.enum_ = Some(v.iter().map(|s| Value::from(*s)).collect());
        self
    }
    pub(crate) fn any_of(mut self, v: Vec<S>) -> S {
        self.any_of = v;
        self
    }
    pub(crate) fn range(mut self, min: i64, max: Option<i64>) -> S {
        self.minimum = Some(min);
        self.maximum = max;
        self
    }
    pub(crate) fn len(mut self, min: usize, max: Option<usize>) -> S {
        self.min_len = Some(min);
        self.max_len = max;
        self
    }
    pub(crate) fn pattern(mut self, p: &'static str) -> S {
        self.pattern = Some((p, Regex::new(p).expect("schema pattern")));
        self
    }
    pub(crate) fn items(mut self, min: usize, max: Option<usize>, unique: bool, item: S) -> S {
        self.min_items = Some(min);
        self.max_items = max;
        self.unique = unique;
        self.items = Some(Box::new(item));
        self
    }
    pub(crate) fn object(
        mut self,
        required: &[&'static str],
        props: Vec<(&'static str, S)>,
        min_props: Option<usize>,
    ) -> S {
        self.required = required.to_vec();
        self.no_additional = true;
        self.properties = props;
        self.min_props = min_props;
        self
    }
}

/// Validates (and coerces) `data`; the error is AJV's `errorsText`.
pub(crate) fn validate(schema: &S, data: &mut Value) -> Result<(), String> {
    let mut errs = Vec::new();
    check(schema, data, "", &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs
            .iter()
            .map(|e| format!("data{e}"))
            .collect::<Vec<_>>()
            .join(", "))
    }
}

fn err(errs: &mut Vec<String>, path: &str, msg: String) {
    errs.push(format!("{path} {msg}"));
}

fn check(s: &S, data: &mut Value, path: &str, errs: &mut Vec<String>) {
    // Type first: with coerceTypes AJV coerces, and reports the type error before any keyword.
    if !s.types.is_empty() && !s.types.iter().any(|t| t.matches(data)) {
        match s.types.iter().find_map(|t| coerce(*t, data)) {
            Some(v) => *data = v,
            None => {
                let names: Vec<&str> = s.types.iter().map(|t| t.name()).collect();
                err(errs, path, format!("must be {}", names.join(",")));
            }
        }
    }
    // Keywords that apply to any type: enum, anyOf.
    if let Some(allowed) = &s.enum_
        && !allowed.iter().any(|a| json_eq(a, data))
    {
        err(
            errs,
            path,
            "must be equal to one of the allowed values".to_string(),
        );
    }
    if !s.any_of.is_empty() {
        let before = errs.len();
        let mut ok = false;
        for branch in &s.any_of {
            let n = errs.len();
            check(branch, data, path, errs);
            if errs.len() == n {
                ok = true;
                break;
            }
        }
        if ok {
            errs.truncate(before);
        } else {
            err(errs, path, "must match a schema in anyOf".to_string());
        }
    }
    // number group
    if let Some(n) = data.as_f64() {
        if let Some(max) = s.maximum
            && n > max as f64
        {
            err(errs, path, format!("must be <= {max}"));
        }
        if let Some(min) = s.minimum
            && n < min as f64
        {
            err(errs, path, format!("must be >= {min}"));
        }
    }
    // string group (lengths in code points, like AJV's ucs2length)
    if let Some(text) = data.as_str() {
        let count = text.chars().count();
        if let Some(max) = s.max_len
            && count > max
        {
            err(
                errs,
                path,
                format!("must NOT have more than {max} characters"),
            );
        }
        if let Some(min) = s.min_len
            && count < min
        {
            err(
                errs,
                path,
                format!("must NOT have fewer than {min} characters"),
            );
        }
        if let Some((src, re)) = &s.pattern
            && !re.is_match(text)
        {
            err(errs, path, format!("must match pattern \"{src}\""));
        }
    }
    // array group
    if let Some(arr) = data.as_array_mut() {
        if let Some(max) = s.max_items
            && arr.len() > max
        {
            err(errs, path, format!("must NOT have more than {max} items"));
        }
        if let Some(min) = s.min_items
            && arr.len() < min
        {
            err(errs, path, format!("must NOT have fewer than {min} items"));
        }
        if s.unique
            && let Some((j, i)) = duplicate(arr, s.items.as_deref())
        {
            err(
                errs,
                path,
                format!("must NOT have duplicate items (items ## {j} and {i} are identical)"),
            );
        }
        if let Some(item) = &s.items {
            for (i, v) in arr.iter_mut().enumerate() {
                check(item, v, &format!("{path}/{i}"), errs);
            }
        }
    }
    // object group
    if let Some(obj) = data.as_object_mut() {
        if let Some(min) = s.min_props
            && obj.len() < min
        {
            err(
                errs,
                path,
                format!("must NOT have fewer than {min} properties"),
            );
        }
        for r in &s.required {
            if !obj.contains_key(*r) {
                err(errs, path, format!("must have required property '{r}'"));
            }
        }
        if s.no_additional {
            for key in obj.keys() {
                if !s.properties.iter().any(|(p, _)| p == key) {
                    err(
                        errs,
                        path,
                        "must NOT have additional properties".to_string(),
                    );
                }
            }
        }
        for (name, sub) in &s.properties {
            if let Some(v) = obj.get_mut(*name) {
                check(sub, v, &format!("{path}/{name}"), errs);
            }
        }
    }
}

/// AJV's uniqueItems loop: from the end, remembering the index of each item; reports
/// `(later index, earlier index)` of the first repeat found. Items of the wrong type are skipped.
fn duplicate(arr: &[Value], items: Option<&S>) -> Option<(usize, usize)> {
    let mut seen: Vec<(&Value, usize)> = Vec::new();
    for i in (0..arr.len()).rev() {
        let item = &arr[i];
        if let Some(s) = items
            && !s.types.is_empty()
            && !s.types.iter().any(|t| t.matches(item))
        {
            continue;
        }
        if let Some((_, j)) = seen.iter().find(|(v, _)| json_eq(v, item)) {
            return Some((*j, i));
        }
        seen.push((item, i));
    }
    None
}

/// Equality as JavaScript sees JSON values (8080 == 8080.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// AJV's coercion table (coerceTypes: true, not "array").
fn coerce(to: Ty, v: &Value) -> Option<Value> {
    match to {
        Ty::Str => match v {
            Value::Number(n) => Some(Value::from(js_number_text(n.as_f64()?))),
            Value::Bool(b) => Some(Value::from(b.to_string())),
            Value::Null => Some(Value::from("")),
            _ => None,
        },
        Ty::Int => {
            let n = match v {
                Value::Bool(b) => f64::from(u8::from(*b)),
                Value::Null => 0.0,
                Value::String(s) if !s.is_empty() => js_number(s)?,
                _ => return None,
            };
            (n.is_finite() && n.fract() == 0.0).then(|| number_value(n))
        }
        Ty::Bool => match v {
            Value::String(s) if s == "false" => Some(Value::Bool(false)),
            Value::String(s) if s == "true" => Some(Value::Bool(true)),
            Value::Null => Some(Value::Bool(false)),
            Value::Number(n) if n.as_f64() == Some(0.0) => Some(Value::Bool(false)),
            Value::Number(n) if n.as_f64() == Some(1.0) => Some(Value::Bool(true)),
            _ => None,
        },
        Ty::Null => match v {
            Value::String(s) if s.is_empty() => Some(Value::Null),
            Value::Bool(false) => Some(Value::Null),
            Value::Number(n) if n.as_f64() == Some(0.0) => Some(Value::Null),
            _ => None,
        },
        Ty::Obj | Ty::Arr => None,
    }
}

/// A number as JSON: integral values as integers (JavaScript has one number type).
pub(crate) fn number_value(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        Value::from(n as i64)
    } else {
        Value::from(n)
    }
}

fn js_number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e21 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// JavaScript's `Number(string)` (what `data == +data` relies on); None for NaN.
pub(crate) fn js_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return Some(0.0);
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(digits) = t.strip_prefix(prefix) {
            return u64::from_str_radix(digits, radix).ok().map(|n| n as f64);
        }
    }
    match t {
        "Infinity" | "+Infinity" => return Some(f64::INFINITY),
        "-Infinity" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let decimal = Regex::new(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$").expect("regex");
    if decimal.is_match(t) {
        t.parse::<f64>().ok()
    } else {
        None
    }
}

/// JavaScript's `Number.parseInt(s, 10)`; None for NaN.
pub(crate) fn js_parse_int(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    Some(if neg { -n } else { n })
}

// ---------------------------------------------------------------------------------------------
// The schemas, transcribed from the OpenAPI document (property order as there: it is the order
// in which AJV reports errors).

/// NPM's domain-name item pattern, exactly as in the OpenAPI document.
pub(crate) const DOMAIN_PATTERN: &str = r#"^[^&| @!#%^();:/\\}{=+?<>,~`'"]+$"#;

fn boolean() -> S {
    ty(Ty::Bool)
}

fn scheme() -> S {
    ty(Ty::Str).one_of_values(&["http", "https"])
}

fn location() -> S {
    ty(Ty::Obj).object(
        &["forward_scheme", "forward_host", "forward_port", "path"],
        vec![
            ("id", S::default().types(&[Ty::Int, Ty::Null])),
            ("path", ty(Ty::Str).len(1, None)),
            ("forward_scheme", scheme()),
            ("forward_host", ty(Ty::Str).len(1, Some(255))),
            ("forward_port", ty(Ty::Int).range(1, Some(65535))),
            ("forward_path", ty(Ty::Str)),
            ("advanced_config", ty(Ty::Str)),
        ],
        None,
    )
}

fn host_properties(trust_forwarded_proto: bool) -> Vec<(&'static str, S)> {
    let mut p = vec![
        (
            "domain_names",
            ty(Ty::Arr).items(1, Some(100), true, ty(Ty::Str).pattern(DOMAIN_PATTERN)),
        ),
        ("forward_scheme", scheme()),
        ("forward_host", ty(Ty::Str).len(1, Some(255))),
        ("forward_port", ty(Ty::Int).range(1, Some(65535))),
        (
            "certificate_id",
            S::default().any_of(vec![
                ty(Ty::Int).range(0, None),
                ty(Ty::Str).pattern("^new$"),
            ]),
        ),
        ("ssl_forced", boolean()),
        ("hsts_enabled", boolean()),
        ("hsts_subdomains", boolean()),
    ];
    if trust_forwarded_proto {
        p.push(("trust_forwarded_proto", boolean()));
    }
    p.extend([
        ("http2_support", boolean()),
        ("block_exploits", boolean()),
        ("caching_enabled", boolean()),
        ("allow_websocket_upgrade", boolean()),
        ("access_list_id", ty(Ty::Int).range(0, None)),
        ("advanced_config", ty(Ty::Str)),
        ("enabled", boolean()),
        ("meta", ty(Ty::Obj)),
        ("locations", ty(Ty::Arr).items(0, None, false, location())),
    ]);
    p
}

/// `POST /api/nginx/proxy-hosts` body.
pub(crate) fn create_host(trust_forwarded_proto: bool) -> S {
    ty(Ty::Obj).object(
        &[
            "domain_names",
            "forward_scheme",
            "forward_host",
            "forward_port",
        ],
        host_properties(trust_forwarded_proto),
        None,
    )
}

/// `PUT /api/nginx/proxy-hosts/{id}` body: every field optional, at least one.
pub(crate) fn update_host(trust_forwarded_proto: bool) -> S {
    ty(Ty::Obj).object(&[], host_properties(trust_forwarded_proto), Some(1))
}

/// `POST /api/tokens` body.
pub(crate) fn token_request() -> S {
    ty(Ty::Obj).object(
        &["identity", "secret"],
        vec![
            ("identity", ty(Ty::Str).len(1, None)),
            ("scope", ty(Ty::Str).len(1, None).one_of_values(&["user"])),
            ("secret", ty(Ty::Str).len(1, None)),
        ],
        None,
    )
}

/// The route validator's `common#/properties/id` for a path id (an error here is NPM's
/// non-public `InternalValidationError`: 400 "Internal Error").
pub(crate) fn path_id(raw: &str) -> Option<i64> {
    let mut v = Value::from(raw);
    validate(&ty(Ty::Int).range(1, None), &mut v).ok()?;
    v.as_i64()
}
