//! Tag policies: which pushed tags a Stage follows, and which of them it should run.
//!
//! Pure: a [`TagPolicy`] is compiled once into a [`CompiledPolicy`], which then answers
//! "is this tag followed?" and "does this tag beat the one we have?".

use std::cmp::Ordering;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use regex::Regex;
use semver::{Version, VersionReq};

use crate::api::{SeenTag, TagPolicy};
use crate::image::is_valid_tag;

/// Tags excluded when a policy sets no `exclude`: cosign signatures, attestations and SBOMs.
/// They are pushed to the same repository as the images but are not runnable.
pub const DEFAULT_EXCLUDES: [&str; 4] = ["sha256-*.sig", "*.sig", "*.att", "*.sbom"];

const ROOT: &str = "spec.tagPolicy";

/// A reason a [`TagPolicy`] cannot be used, tied to the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// Path of the field, e.g. `spec.tagPolicy.regex` (`spec.tagPolicy` for the policy as a whole).
    pub field: String,
    pub message: String,
}

impl PolicyError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        let field = if field.is_empty() {
            ROOT.to_owned()
        } else {
            format!("{ROOT}.{field}")
        };
        Self {
            field,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    Any,
    Exact(String),
    Glob(GlobMatcher),
    Regex {
        re: Regex,
        source: String,
        extract: Option<String>,
    },
    Semver {
        req: VersionReq,
        prerelease: bool,
    },
}

/// A validated [`TagPolicy`], ready to judge tags.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    matcher: Matcher,
    exclude: GlobSet,
}

impl CompiledPolicy {
    /// Validates and compiles a policy; `None` follows every tag, the most recently seen winning.
    ///
    /// The policy's `exclude`, when set, *replaces* [`DEFAULT_EXCLUDES`] rather than adding to
    /// them: `exclude: []` follows cosign artefacts too. All problems are reported at once.
    pub fn compile(policy: Option<&TagPolicy>) -> Result<Self, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let Some(p) = policy else {
            let exclude = exclude_set(&DEFAULT_EXCLUDES, &mut errors);
            debug_assert!(errors.is_empty(), "default excludes must compile");
            return Ok(Self {
                matcher: Matcher::Any,
                exclude,
            });
        };

        let matcher = one_matcher(p, &mut errors);
        if p.extract.is_some() && p.regex.is_none() {
            errors.push(PolicyError::new(
                "extract",
                "only applies together with `regex`",
            ));
        }
        if p.allow_prerelease.is_some() && p.semver.is_none() {
            errors.push(PolicyError::new(
                "allowPrerelease",
                "only applies together with `semver`",
            ));
        }
        let exclude = match &p.exclude {
            Some(globs) => exclude_set(globs, &mut errors),
            None => exclude_set(&DEFAULT_EXCLUDES, &mut errors),
        };

        match matcher {
            Some(matcher) if errors.is_empty() => Ok(Self { matcher, exclude }),
            _ => Err(errors),
        }
    }

    /// Whether the Stage follows `tag`: a valid Docker tag, not excluded, matching the policy.
    pub fn accepts(&self, tag: &str) -> bool {
        is_valid_tag(tag)
            && !self.exclude.is_match(tag)
            && match &self.matcher {
                Matcher::Any => true,
                Matcher::Exact(t) => t == tag,
                Matcher::Glob(g) => g.is_match(tag),
                Matcher::Regex { re, .. } => re.is_match(tag),
                Matcher::Semver { req, prerelease } => {
                    parse_version(tag).is_some_and(|v| in_range(req, &v, *prerelease))
                }
            }
    }

    /// Whether a newly seen `candidate` should replace `current` (the Stage's `status.latest`).
    ///
    /// A rejected candidate never does; a `current` the policy no longer accepts (the policy
    /// changed) always loses. Versions and extracted values go by the highest, an equal one
    /// only when re-pushed with a different digest. `exact` takes a re-push: a new digest or a
    /// later `seenAt`. Everything else goes by the most recently seen, the candidate winning
    /// ties; a late delivery of an older sighting does not win.
    pub fn is_better(&self, candidate: &SeenTag, current: Option<&SeenTag>) -> bool {
        if !self.accepts(&candidate.tag) {
            return false;
        }
        let Some(current) = current.filter(|c| self.accepts(&c.tag)) else {
            return true;
        };
        let new_digest = candidate.digest.is_some() && candidate.digest != current.digest;
        match &self.matcher {
            Matcher::Exact(_) => new_digest || candidate.seen_at > current.seen_at,
            Matcher::Semver { .. }
            | Matcher::Regex {
                extract: Some(_), ..
            } => match self.rank(candidate, current) {
                Ordering::Equal => new_digest,
                order => order.is_gt(),
            },
            Matcher::Any | Matcher::Glob(_) | Matcher::Regex { .. } => {
                candidate.seen_at >= current.seen_at
            }
        }
    }

    /// The best accepted candidate: the highest version or extracted value, else the greatest
    /// `seenAt` (RFC 3339 UTC text sorts by time); ties go to the later one in iteration order.
    pub fn select<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a SeenTag>,
    ) -> Option<&'a SeenTag> {
        candidates
            .into_iter()
            .filter(|c| self.accepts(&c.tag))
            .max_by(|a, b| self.rank(a, b).then_with(|| a.seen_at.cmp(&b.seen_at)))
    }

    /// Short human description for status messages: `semver >=1.0.0`, `glob main-*`, `any tag`.
    pub fn describe(&self) -> String {
        match &self.matcher {
            Matcher::Any => "any tag".to_owned(),
            Matcher::Exact(tag) => format!("exact {tag}"),
            Matcher::Glob(g) => format!("glob {}", g.glob()),
            Matcher::Regex {
                source,
                extract: None,
                ..
            } => format!("regex {source}"),
            Matcher::Regex {
                source,
                extract: Some(group),
                ..
            } => format!("regex {source} by {group}"),
            Matcher::Semver {
                req,
                prerelease: false,
            } => format!("semver {req}"),
            Matcher::Semver {
                req,
                prerelease: true,
            } => format!("semver {req} with pre-releases"),
        }
    }

    /// Order of two accepted tags by what the policy ranks on; `Equal` when it ranks on nothing
    /// but when they were seen.
    fn rank(&self, a: &SeenTag, b: &SeenTag) -> Ordering {
        match &self.matcher {
            Matcher::Semver { .. } => parse_version(&a.tag).cmp(&parse_version(&b.tag)),
            Matcher::Regex {
                re,
                extract: Some(group),
                ..
            } => {
                let value = |tag| {
                    re.captures(tag)
                        .and_then(|c| c.name(group))
                        .map_or("", |m| m.as_str())
                };
                compare_values(value(&a.tag), value(&b.tag))
            }
            _ => Ordering::Equal,
        }
    }
}

fn exact(tag: &str) -> Result<Matcher, PolicyError> {
    if is_valid_tag(tag) {
        Ok(Matcher::Exact(tag.to_owned()))
    } else {
        Err(PolicyError::new(
            "exact",
            format!("`{tag}` is not a valid Docker tag"),
        ))
    }
}

fn glob(pattern: &str) -> Result<Glob, PolicyError> {
    if pattern.is_empty() {
        return Err(PolicyError::new("glob", "must not be empty"));
    }
    // Explicit, so a pattern means the same whatever platform the controller runs on.
    GlobBuilder::new(pattern)
        .backslash_escape(true)
        .build()
        .map_err(|e| PolicyError::new("glob", format!("invalid glob: {}", e.kind())))
}

fn exclude_set<S: AsRef<str>>(globs: &[S], errors: &mut Vec<PolicyError>) -> GlobSet {
    let mut set = GlobSetBuilder::new();
    for (i, pattern) in globs.iter().enumerate() {
        match glob(pattern.as_ref()) {
            Ok(g) => {
                set.add(g);
            }
            Err(e) => errors.push(PolicyError {
                field: format!("{ROOT}.exclude[{i}]"),
                ..e
            }),
        }
    }
    set.build().unwrap_or_else(|e| {
        errors.push(PolicyError::new("exclude", e.to_string()));
        GlobSet::empty()
    })
}

fn regex(pattern: &str, extract: Option<&str>) -> Result<Matcher, PolicyError> {
    let invalid = |e: regex::Error| {
        // Syntax errors draw a caret under the pattern over several lines; a status message
        // wants only the last one, the reason.
        let text = e.to_string();
        let reason = text.lines().last().unwrap_or_default();
        let reason = reason.strip_prefix("error: ").unwrap_or(reason);
        PolicyError::new("regex", format!("invalid regular expression: {reason}"))
    };
    if pattern.is_empty() {
        return Err(PolicyError::new("regex", "must not be empty"));
    }
    // The bare pattern first, so errors speak of what the user wrote, not of our anchoring.
    Regex::new(pattern).map_err(invalid)?;
    let re = Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)?;
    if let Some(group) = extract
        && !re.capture_names().flatten().any(|n| n == group)
    {
        return Err(PolicyError::new(
            "extract",
            format!("`regex` has no capture group named `{group}`"),
        ));
    }
    Ok(Matcher::Regex {
        re,
        source: pattern.to_owned(),
        extract: extract.map(str::to_owned),
    })
}

fn semver(range: &str, prerelease: bool) -> Result<Matcher, PolicyError> {
    let req = VersionReq::parse(range)
        .map_err(|e| PolicyError::new("semver", format!("invalid version range: {e}")))?;
    Ok(Matcher::Semver { req, prerelease })
}

fn parse_version(text: &str) -> Option<Version> {
    Version::parse(text.strip_prefix('v').unwrap_or(text)).ok()
}

/// `VersionReq` alone already takes a pre-release when the range names one of the same
/// `major.minor.patch` (`>=1.3.0-rc.1` takes `1.3.0-rc.2`), an explicit opt-in we keep.
/// `allowPrerelease` widens that to any pre-release whose release would be in range.
fn in_range(req: &VersionReq, v: &Version, prerelease: bool) -> bool {
    req.matches(v) || (prerelease && req.matches(&Version::new(v.major, v.minor, v.patch)))
}

fn compare_values(a: &str, b: &str) -> Ordering {
    if let (Ok(x), Ok(y)) = (a.parse::<u128>(), b.parse::<u128>()) {
        x.cmp(&y)
    } else if let (Some(x), Some(y)) = (parse_version(a), parse_version(b)) {
        x.cmp(&y)
    } else {
        a.cmp(b)
    }
}

/// The one matcher the policy sets (`exact`, `glob`, `regex` or `semver`); errors when none or
/// several are set, or the one set does not compile.
fn one_matcher(p: &TagPolicy, errors: &mut Vec<PolicyError>) -> Option<Matcher> {
    let kinds = [
        ("exact", p.exact.as_deref().map(exact)),
        (
            "glob",
            p.glob
                .as_deref()
                .map(|g| glob(g).map(|g| Matcher::Glob(g.compile_matcher()))),
        ),
        (
            "regex",
            p.regex.as_deref().map(|r| regex(r, p.extract.as_deref())),
        ),
        (
            "semver",
            p.semver
                .as_deref()
                .map(|s| semver(s, p.allow_prerelease == Some(true))),
        ),
    ];
    let set: Vec<_> = kinds
        .iter()
        .filter(|(_, m)| m.is_some())
        .map(|(k, _)| format!("`{k}`"))
        .collect();
    if set.len() != 1 {
        let found = if set.is_empty() {
            "none".to_owned()
        } else {
            set.join(", ")
        };
        errors.push(PolicyError::new(
            "",
            format!("set exactly one of `exact`, `glob`, `regex`, `semver`; found {found}"),
        ));
    }
    let mut matcher = None;
    for (_, m) in kinds {
        match m {
            Some(Ok(m)) => matcher = Some(m),
            Some(Err(e)) => errors.push(e),
            None => {}
        }
    }
    matcher
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const T1: &str = "2025-01-01T10:00:00Z";
    const T2: &str = "2025-01-01T10:00:01Z";
    const T3: &str = "2025-01-02T09:00:00Z";

    /// `null` is "no policy"; otherwise the policy as a user writes it.
    fn compile(policy: &Value) -> CompiledPolicy {
        let policy: Option<TagPolicy> = serde_json::from_value(policy.clone()).unwrap();
        CompiledPolicy::compile(policy.as_ref()).unwrap_or_else(|e| panic!("{policy:?}: {e:?}"))
    }

    /// An empty digest means the sender did not say.
    fn seen(tag: &str, digest: &str, seen_at: &str) -> SeenTag {
        SeenTag {
            tag: tag.to_owned(),
            digest: (!digest.is_empty()).then(|| digest.to_owned()),
            source: "test".to_owned(),
            delivery_id: None,
            seen_at: seen_at.to_owned(),
            recent_deliveries: Vec::new(),
        }
    }

    #[test]
    fn accepts() {
        #[rustfmt::skip]
        let rows = [
            (json!(null), "main-abc", true),
            (json!(null), "sha256-abc.sig", false),
            (json!(null), "sha256-abc.att", false),
            (json!(null), "sha256-abc.sbom", false),
            (json!(null), "-leading-dash", false),
            (json!(null), ".leading-dot", false),
            (json!(null), "has/slash", false),
            (json!(null), "", false),
            (json!({"exact": "latest"}), "latest", true),
            (json!({"exact": "latest"}), "latest-1", false),
            (json!({"glob": "main-*"}), "main-3f2a", true),
            (json!({"glob": "main-*"}), "dev-3f2a", false),
            (json!({"glob": "main-*"}), "main-3f2a.sig", false),
            // A user's `exclude` replaces the defaults.
            (json!({"glob": "*", "exclude": ["*-wip"]}), "x.sig", true),
            (json!({"glob": "*", "exclude": ["*-wip"]}), "feature-wip", false),
            (json!({"glob": "*", "exclude": []}), "sha256-abc.sig", true),
            (json!({"regex": r"build-\d+"}), "build-42", true),
            (json!({"regex": r"build-\d+"}), "xbuild-42", false),
            (json!({"regex": r"build-\d+"}), "build-42x", false),
            (json!({"regex": "a|ab"}), "ab", true),
            (json!({"regex": "a|ab"}), "b", false),
            (json!({"regex": r"main-(?P<n>\d+)", "extract": "n"}), "main-7", true),
            (json!({"semver": "^1"}), "1.2.3", true),
            (json!({"semver": "^1"}), "v1.2.3", true),
            (json!({"semver": "^1"}), "2.0.0", false),
            (json!({"semver": "^1"}), "1.2", false),
            (json!({"semver": "*"}), "latest", false),
            (json!({"semver": "*"}), "1.2.0-broken", false),
            (json!({"semver": "*", "allowPrerelease": false}), "1.2.0-rc.1", false),
            (json!({"semver": "*", "allowPrerelease": true}), "1.2.0-broken", true),
            (json!({"semver": "^1", "allowPrerelease": true}), "v1.3.0-rc.1", true),
            (json!({"semver": "^1", "allowPrerelease": true}), "2.0.0-rc.1", false),
            // A range naming a pre-release opts into that release's pre-releases only.
            (json!({"semver": ">=1.3.0-rc.1"}), "1.3.0-rc.2", true),
            (json!({"semver": ">=1.3.0-rc.1"}), "1.4.0-rc.1", false),
            (json!({"semver": "*"}), "1.2.3+build", false),
        ];
        for (policy, tag, expected) in rows {
            assert_eq!(
                compile(&policy).accepts(tag),
                expected,
                "{policy} on {tag:?}"
            );
        }
    }

    #[test]
    fn valid_tags() {
        let (long, too_long) = ("a".repeat(128), "a".repeat(129));
        let rows = [
            ("latest", true),
            ("_private", true),
            ("v1.2.3-rc.1_x", true),
            (long.as_str(), true),
            (too_long.as_str(), false),
            ("", false),
            ("-x", false),
            ("a+b", false),
            ("a:b", false),
            ("ä", false),
        ];
        for (tag, expected) in rows {
            assert_eq!(is_valid_tag(tag), expected, "{tag:?}");
        }
    }

    #[test]
    fn is_better() {
        let any = json!(null);
        let latest = json!({"exact": "latest"});
        let v1 = json!({"semver": "^1"});
        let pre = json!({"semver": "*", "allowPrerelease": true});
        let build = json!({"regex": r"build-(?P<n>\d+)", "extract": "n"});
        let release = json!({"regex": r"release-(?P<v>.+)", "extract": "v"});
        let word = json!({"regex": r"rc-(?P<w>[a-z]+)", "extract": "w"});
        let main = json!({"glob": "main-*"});
        #[rustfmt::skip]
        let rows = [
            (&any, seen("b", "", T2), Some(seen("a", "", T1)), true),
            (&any, seen("b", "", T1), Some(seen("a", "", T1)), true),
            (&any, seen("b", "", T1), Some(seen("a", "", T2)), false),
            (&any, seen("a", "", T1), None, true),
            (&any, seen("x.sig", "", T3), Some(seen("a", "", T1)), false),
            (&any, seen("x.sig", "", T3), None, false),
            (&latest, seen("latest", "d2", T1), Some(seen("latest", "d1", T1)), true),
            (&latest, seen("latest", "d1", T2), Some(seen("latest", "d1", T1)), true),
            (&latest, seen("latest", "d1", T1), Some(seen("latest", "d1", T1)), false),
            (&latest, seen("latest", "", T1), Some(seen("latest", "d1", T1)), false),
            (&latest, seen("main", "d2", T3), Some(seen("latest", "d1", T1)), false),
            (&v1, seen("1.3.0", "", T1), Some(seen("1.2.0", "", T2)), true),
            (&v1, seen("1.2.0", "", T3), Some(seen("1.3.0", "", T1)), false),
            (&v1, seen("v1.10.0", "", T1), Some(seen("1.9.0", "", T1)), true),
            (&v1, seen("1.2.0", "d2", T2), Some(seen("1.2.0", "d1", T1)), true),
            (&v1, seen("1.2.0", "d1", T2), Some(seen("1.2.0", "d1", T1)), false),
            (&v1, seen("2.0.0", "", T3), Some(seen("1.0.0", "", T1)), false),
            // The policy changed under `current`: anything accepted replaces it.
            (&v1, seen("1.0.0", "", T1), Some(seen("5.0.0", "", T2)), true),
            (&main, seen("main-a", "", T1), Some(seen("dev-a", "", T2)), true),
            (&pre, seen("1.3.0", "", T1), Some(seen("1.3.0-rc.1", "", T1)), true),
            (&pre, seen("1.3.0-rc.10", "", T1), Some(seen("1.3.0-rc.2", "", T1)), true),
            (&build, seen("build-10", "", T1), Some(seen("build-9", "", T2)), true),
            (&build, seen("build-9", "", T3), Some(seen("build-10", "", T1)), false),
            (&build, seen("build-9", "d2", T2), Some(seen("build-9", "d1", T1)), true),
            (&build, seen("build-9", "d1", T2), Some(seen("build-9", "d1", T1)), false),
            (&release, seen("release-v1.10.0", "", T1), Some(seen("release-1.9.0", "", T1)), true),
            (&word, seen("rc-b", "", T1), Some(seen("rc-a", "", T2)), true),
            (&word, seen("rc-a", "", T2), Some(seen("rc-b", "", T1)), false),
            (&main, seen("main-a", "", T2), Some(seen("main-z", "", T1)), true),
            (&json!({"regex": r"build-\d+"}), seen("build-1", "", T2), Some(seen("build-9", "", T1)), true),
        ];
        for (policy, candidate, current, expected) in rows {
            assert_eq!(
                compile(policy).is_better(&candidate, current.as_ref()),
                expected,
                "{policy}: {candidate:?} over {current:?}"
            );
        }
    }

    #[test]
    fn select() {
        let tags = [
            seen("1.2.0", "", T1),
            seen("v1.10.0", "", T1),
            seen("1.11.0-rc.1", "", T3),
            seen("2.0.0", "", T2),
            seen("build-10", "", T1),
            seen("build-9", "", T3),
            seen("sha256-abc.sig", "", T3),
            seen("latest", "d1", T2),
            seen("latest", "d2", T1),
        ];
        let pick = |policy: Value| {
            let best = compile(&policy).select(&tags);
            best.map(|t| (t.tag.as_str(), t.digest.as_deref()))
        };

        assert_eq!(pick(json!({"semver": "^1"})), Some(("v1.10.0", None)));
        let pre = json!({"semver": "^1", "allowPrerelease": true});
        assert_eq!(pick(pre), Some(("1.11.0-rc.1", None)));
        assert_eq!(pick(json!({"semver": "^3"})), None);
        let build = json!({"regex": r"build-(?P<n>\d+)", "extract": "n"});
        assert_eq!(pick(build), Some(("build-10", None)));
        // Without `extract` the newest wins, not the highest.
        assert_eq!(
            pick(json!({"regex": r"build-\d+"})),
            Some(("build-9", None))
        );
        // The newest sighting of the tag, not the last listed.
        assert_eq!(
            pick(json!({"exact": "latest"})),
            Some(("latest", Some("d1")))
        );
        // Three tags tie at T3: the signature is excluded, the later of the others wins.
        assert_eq!(pick(json!(null)), Some(("build-9", None)));
        assert_eq!(compile(&json!(null)).select([]), None);
    }

    #[test]
    fn invalid_policies() {
        #[rustfmt::skip]
        let rows = [
            (json!({}), "spec.tagPolicy"),
            (json!({"exclude": ["*-wip"]}), "spec.tagPolicy"),
            (json!({"glob": "*", "regex": ".*"}), "spec.tagPolicy"),
            (json!({"exact": "bad tag"}), "spec.tagPolicy.exact"),
            (json!({"glob": "main-[a"}), "spec.tagPolicy.glob"),
            (json!({"glob": ""}), "spec.tagPolicy.glob"),
            (json!({"regex": "build-("}), "spec.tagPolicy.regex"),
            (json!({"regex": ""}), "spec.tagPolicy.regex"),
            (json!({"semver": ">=>1"}), "spec.tagPolicy.semver"),
            (json!({"semver": ""}), "spec.tagPolicy.semver"),
            (json!({"glob": "*", "extract": "n"}), "spec.tagPolicy.extract"),
            (json!({"regex": r"b-(?P<n>\d+)", "extract": "m"}), "spec.tagPolicy.extract"),
            (json!({"regex": r"b-(\d+)", "extract": "1"}), "spec.tagPolicy.extract"),
            (json!({"glob": "*", "allowPrerelease": true}), "spec.tagPolicy.allowPrerelease"),
            (json!({"glob": "*", "exclude": ["ok", "a[", ""]}), "spec.tagPolicy.exclude[1]"),
        ];
        for (policy, field) in rows {
            let parsed: TagPolicy = serde_json::from_value(policy.clone()).unwrap();
            let errors = CompiledPolicy::compile(Some(&parsed)).expect_err(&policy.to_string());
            assert!(
                errors.iter().any(|e| e.field == field),
                "{policy}: {errors:?}"
            );
        }
    }

    #[test]
    fn errors_name_fields_and_all_are_reported() {
        let policy = json!({"glob": "a[", "regex": "(", "exclude": [""]});
        let policy: TagPolicy = serde_json::from_value(policy).unwrap();
        let errors = CompiledPolicy::compile(Some(&policy)).unwrap_err();
        let text: Vec<_> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert!(
            text[0].starts_with("spec.tagPolicy: ") && text[0].ends_with("found `glob`, `regex`")
        );
        assert!(text[1].starts_with("spec.tagPolicy.glob: invalid glob"));
        assert_eq!(
            text[2],
            "spec.tagPolicy.regex: invalid regular expression: unclosed group"
        );
        assert_eq!(text[3], "spec.tagPolicy.exclude[0]: must not be empty");
    }

    #[test]
    fn describe() {
        #[rustfmt::skip]
        let rows = [
            (json!(null), "any tag"),
            (json!({"exact": "main"}), "exact main"),
            (json!({"glob": "main-*"}), "glob main-*"),
            (json!({"regex": r"b-(?P<n>\d+)", "extract": "n"}), r"regex b-(?P<n>\d+) by n"),
            (json!({"semver": ">=1.0.0"}), "semver >=1.0.0"),
            (json!({"semver": "^1", "allowPrerelease": true}), "semver ^1 with pre-releases"),
        ];
        for (policy, expected) in rows {
            assert_eq!(compile(&policy).describe(), expected);
        }
    }
}
