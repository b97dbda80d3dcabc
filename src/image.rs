//! Image references — `[registry[:port]/]path/name[:tag][@algo:hex]` — read in one place: by
//! the webhook parsers, the recorder, the Docker adapter and the engine's spec validation. A `:`
//! before the last `/` belongs to the registry's port, never to a tag.

/// The parts of a reference, borrowed from it; nothing normalised (see
/// [`canonical_repository`]) and nothing validated (see [`is_valid_tag`], [`is_valid_digest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRef<'a> {
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    pub fn parse(reference: &'a str) -> ImageRef<'a> {
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (reference, None),
        };
        let last = name.rfind('/').map_or(0, |i| i + 1);
        match name[last..].rfind(':') {
            Some(i) => ImageRef {
                repository: &name[..last + i],
                tag: Some(&name[last + i + 1..]),
                digest,
            },
            None => ImageRef {
                repository: name,
                tag: None,
                digest,
            },
        }
    }

    /// The tag Docker assumes when none is given.
    pub fn tag_or_latest(&self) -> &'a str {
        self.tag.unwrap_or("latest")
    }
}

/// The repository as the same image is known by any of its names: `nginx`, `library/nginx` and
/// `docker.io/library/nginx` are one. A tag or digest in `reference` is ignored.
pub fn canonical_repository(reference: &str) -> String {
    let repo = ImageRef::parse(reference).repository;
    let repo = repo
        .strip_prefix("docker.io/")
        .or_else(|| repo.strip_prefix("index.docker.io/"))
        .unwrap_or(repo);
    repo.strip_prefix("library/").unwrap_or(repo).to_string()
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= 128
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `algo:hex` (an OCI digest), with the length the registered algorithms imply.
pub fn is_valid_digest(digest: &str) -> bool {
    let Some((algo, hex)) = digest.split_once(':') else {
        return false;
    };
    let algo_ok = !algo.is_empty()
        && algo
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
    let len_ok = match algo {
        "sha256" => hex.len() == 64,
        "sha512" => hex.len() == 128,
        _ => !hex.is_empty(),
    };
    algo_ok
        && len_ok
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_on_the_tag_colon_only() {
        let r = |s| {
            let r = ImageRef::parse(s);
            (r.repository, r.tag, r.digest)
        };
        assert_eq!(r("app:1.0"), ("app", Some("1.0"), None));
        assert_eq!(
            r("localhost:5000/team/app:1.0"),
            ("localhost:5000/team/app", Some("1.0"), None)
        );
        assert_eq!(
            r("localhost:5000/team/app"),
            ("localhost:5000/team/app", None, None)
        );
        assert_eq!(
            r("app:1@sha256:abc"),
            ("app", Some("1"), Some("sha256:abc"))
        );
        assert_eq!(r("app@sha256:abc"), ("app", None, Some("sha256:abc")));
        assert_eq!(
            ImageRef::parse("localhost:5000/app").tag_or_latest(),
            "latest"
        );
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        assert_eq!(canonical_repository("docker.io/library/nginx:1"), "nginx");
        assert_eq!(canonical_repository("nginx"), "nginx");
        assert_eq!(canonical_repository("library/nginx@sha256:ab"), "nginx");
        assert_eq!(
            canonical_repository("localhost:5000/a/b:2"),
            "localhost:5000/a/b"
        );
    }

    #[test]
    fn tags_and_digests_follow_the_grammar() {
        for (tag, ok) in [
            ("1.0.0", true),
            ("latest", true),
            ("_x", true),
            ("v1-rc.2_b", true),
            ("", false),
            ("-bad", false),
            (".bad", false),
            ("a/b", false),
            ("a:b", false),
        ] {
            assert_eq!(is_valid_tag(tag), ok, "{tag:?}");
        }
        assert!(is_valid_tag(&"a".repeat(128)));
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(is_valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_valid_digest("sha256:abc"));
        assert!(!is_valid_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_valid_digest("nocolon"));
    }
}
