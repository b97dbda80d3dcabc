//! Reading Project and Stage manifests from a directory: the very files one would `kubectl
//! apply`, several documents per file. A bad document is reported by file and field and never
//! hides the good ones.

use std::path::{Path, PathBuf};

use kube::{CustomResourceExt, Resource};
use serde::de::DeserializeOwned;

use crate::api::{API_VERSION, Project, Stage};

/// A resource read from a file.
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    pub resource: T,
    pub file: PathBuf,
}

/// A problem with a file or one document of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// Document number in the file, from 1, when the problem is in one document.
    pub document: Option<usize>,
    /// `Kind/namespace/name` when the document got that far.
    pub resource: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, " (document {d})")?;
        }
        if let Some(r) = &self.resource {
            write!(f, " {r}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Everything found in a manifest directory.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub projects: Vec<Loaded<Project>>,
    pub stages: Vec<Loaded<Stage>>,
    pub errors: Vec<ManifestError>,
    /// (`Project`|`Stage`, namespace, name) defined more than once: every copy is rejected, and
    /// what the store holds for that name stays as it was.
    pub conflicts: std::collections::BTreeSet<(&'static str, String, String)>,
}

impl Manifests {
    /// Files with at least one error: resources they held are kept as last known, not deleted.
    pub fn broken_files(&self) -> impl Iterator<Item = &Path> {
        self.errors.iter().map(|e| e.file.as_path())
    }
}

/// Namespace used when a manifest names none, as `kubectl apply` would.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Reads every `*.yaml`/`*.yml` below `dir` (hidden entries skipped), in name order.
pub fn load_dir(dir: &Path) -> std::io::Result<Manifests> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut out = Manifests::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => parse_into(&file, &text, &mut out),
            Err(e) => out.errors.push(ManifestError {
                file,
                document: None,
                resource: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    check_duplicates(&mut out);
    Ok(out)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Parses one file's documents into `out`.
pub fn parse_into(file: &Path, text: &str, out: &mut Manifests) {
    let err = |document: Option<usize>, resource: Option<String>, message: String| ManifestError {
        file: file.to_path_buf(),
        document,
        resource,
        message,
    };
    let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            out.errors
                .push(err(None, None, format!("not valid YAML: {e}")));
            return;
        }
    };
    for (i, doc) in docs.into_iter().enumerate() {
        let n = Some(i + 1);
        if doc.is_null() {
            continue;
        }
        let api_version = doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
        let kind = doc
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let name = doc
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        if !api_version.starts_with("tinyforge.dev/") {
            // Other kinds (a Namespace, a Kustomization) may share a GitOps folder: not ours.
            if api_version.is_empty() || kind.is_empty() {
                out.errors
                    .push(err(n, None, "apiVersion and kind are required".to_string()));
            }
            continue;
        }
        let what = Some(format!("{kind}/{name}"));
        if api_version != API_VERSION {
            out.errors.push(err(
                n,
                what,
                format!("apiVersion {api_version:?} is not served; use {API_VERSION:?}"),
            ));
            continue;
        }
        if name.is_empty() || !is_dns_label(&name) {
            out.errors.push(err(
                n,
                what,
                format!(
                    "metadata.name: {name:?} must be a DNS label (lowercase letters, digits, `-`)"
                ),
            ));
            continue;
        }
        match kind.as_str() {
            "Project" => match typed::<Project>(doc) {
                Ok(mut r) => {
                    default_namespace(&mut r);
                    out.projects.push(Loaded {
                        resource: r,
                        file: file.to_path_buf(),
                    })
                }
                Err(e) => out.errors.push(err(n, what, e)),
            },
            "Stage" => match typed::<Stage>(doc) {
                Ok(mut r) => {
                    default_namespace(&mut r);
                    out.stages.push(Loaded {
                        resource: r,
                        file: file.to_path_buf(),
                    })
                }
                Err(e) => out.errors.push(err(n, what, e)),
            },
            other => out.errors.push(err(
                n,
                what,
                format!("kind {other:?} is not a tiny-forge kind (Project, Stage)"),
            )),
        }
    }
}

/// The typed resource, or what is wrong with the document: a type error by field path, else
/// every field the type does not know. An unknown field is an error, not a warning: a misspelled
/// `pinedTag` would otherwise be dropped silently and the Stage deployed without its pin.
fn typed<T: DeserializeOwned + CustomResourceExt>(doc: serde_json::Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    // One pass: serde_path_to_error names the field of a type error, serde_ignored reports the
    // fields the type dropped.
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(segments(&path));
    let ignoring = serde_ignored::Deserializer::new(&doc, &mut note);
    let typed = serde_path_to_error::deserialize(ignoring).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })?;
    // kube's derived types leave the type fields to the caller, which checked them already.
    unknown.retain(
        |path| !matches!(path.as_slice(), [Segment::Key(k)] if k == "apiVersion" || k == "kind"),
    );
    if unknown.is_empty() {
        return Ok(typed);
    }
    let schema = serde_json::to_value(T::crd()).unwrap_or_default();
    let schema = schema
        .pointer("/spec/versions/0/schema/openAPIV3Schema")
        .unwrap_or(&serde_json::Value::Null);
    Err(unknown
        .iter()
        .map(|path| {
            let shown = display(path);
            match suggest(schema, path) {
                Some(known) => format!("{shown}: unknown field, did you mean `{known}`?"),
                None => format!("{shown}: unknown field"),
            }
        })
        .collect::<Vec<_>>()
        .join("; "))
}

/// One step of a field path: a field name or an index into a list.
#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(Segment::Index(*index)),
        Path::Map { key, .. } => out.push(Segment::Key(key.clone())),
        _ => {}
    }
    out
}

/// `spec.container.env[0].value`, the way type errors name fields.
fn display(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) if out.is_empty() => out.push_str(k),
            Segment::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The field the schema knows next to `path` whose name is closest to its last segment, if any
/// is close enough to be a likely typo.
fn suggest(schema: &serde_json::Value, path: &[Segment]) -> Option<String> {
    let (Segment::Key(field), parent) = path.split_last()? else {
        return None;
    };
    let mut node = schema;
    for segment in parent {
        node = match segment {
            Segment::Index(_) => node.get("items")?,
            Segment::Key(k) => node.get("properties")?.get(k)?,
        };
    }
    node.get("properties")?
        .as_object()?
        .keys()
        .map(|known| (strsim::jaro_winkler(field, known), known))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, known)| known.clone())
}

fn default_namespace<T: Resource>(r: &mut T) {
    let meta = r.meta_mut();
    if meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some(DEFAULT_NAMESPACE.to_string());
    }
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The same resource in two places is ambiguous: both copies are rejected, loudly.
fn check_duplicates(out: &mut Manifests) {
    fn dupes<T: Resource>(
        items: &mut Vec<Loaded<T>>,
        errors: &mut Vec<ManifestError>,
        conflicts: &mut std::collections::BTreeSet<(&'static str, String, String)>,
        kind: &'static str,
    ) {
        let key = |r: &T| (r.meta().namespace.clone(), r.meta().name.clone());
        let mut bad = std::collections::BTreeSet::new();
        for (i, a) in items.iter().enumerate() {
            for b in &items[i + 1..] {
                if key(&a.resource) == key(&b.resource) {
                    bad.insert(key(&a.resource));
                    errors.push(ManifestError {
                        file: b.file.clone(),
                        document: None,
                        resource: Some(format!(
                            "{kind}/{}",
                            b.resource.meta().name.as_deref().unwrap_or("")
                        )),
                        message: format!("also defined in {}", a.file.display()),
                    });
                }
            }
        }
        items.retain(|l| !bad.contains(&key(&l.resource)));
        conflicts.extend(
            bad.into_iter()
                .map(|(ns, n)| (kind, ns.unwrap_or_default(), n.unwrap_or_default())),
        );
    }
    dupes(
        &mut out.projects,
        &mut out.errors,
        &mut out.conflicts,
        "Project",
    );
    dupes(
        &mut out.stages,
        &mut out.errors,
        &mut out.conflicts,
        "Stage",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Manifests {
        let mut m = Manifests::default();
        parse_into(Path::new("x.yaml"), text, &mut m);
        m
    }

    #[test]
    fn several_documents_and_foreign_kinds() {
        let m = parse(
            "apiVersion: tinyforge.dev/v1alpha1\nkind: Project\nmetadata: {name: demo}\nspec: {image: demo}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
             apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {name: prod, namespace: team}\nspec: {projectRef: demo, pinnedTag: '1.0'}\n",
        );
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        assert_eq!(m.projects.len(), 1);
        assert_eq!(
            m.projects[0].resource.metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(
            m.stages[0].resource.metadata.namespace.as_deref(),
            Some("team")
        );
        assert_eq!(m.stages[0].resource.spec.pinned_tag.as_deref(), Some("1.0"));
    }

    #[test]
    fn a_bad_document_names_its_field_and_spares_the_others() {
        let m = parse(
            "apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {name: bad}\nspec: {projectRef: demo, hostPort: 99999}\n---\n\
             apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {name: good}\nspec: {projectRef: demo}\n",
        );
        assert_eq!(m.stages.len(), 1);
        assert_eq!(m.stages[0].resource.metadata.name.as_deref(), Some("good"));
        assert_eq!(m.errors.len(), 1);
        let e = m.errors[0].to_string();
        assert!(e.contains("document 1"), "{e}");
        assert!(e.contains("Stage/bad"), "{e}");
        assert!(e.contains("spec.hostPort"), "{e}");
    }

    #[test]
    fn rejections_are_explained() {
        for (text, needle) in [
            (
                "apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {name: a}\nspec: {}\n",
                "projectRef",
            ),
            (
                "apiVersion: tinyforge.dev/v2\nkind: Stage\nmetadata: {name: a}\n",
                "not served",
            ),
            (
                "apiVersion: tinyforge.dev/v1alpha1\nkind: Widget\nmetadata: {name: a}\n",
                "not a tiny-forge kind",
            ),
            (
                "apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {name: Bad_Name}\nspec: {projectRef: x}\n",
                "DNS label",
            ),
            ("kind: Stage\n", "apiVersion and kind are required"),
            ("key: [unclosed\n", "not valid YAML"),
        ] {
            let m = parse(text);
            assert_eq!(m.errors.len(), 1, "{text}");
            assert!(
                m.errors[0].message.contains(needle),
                "{} lacks {needle}",
                m.errors[0]
            );
        }
    }

    #[test]
    fn build_settings_are_read_and_checked() {
        let m = parse(
            "apiVersion: tinyforge.dev/v1alpha1\nkind: Project\nmetadata: {name: a}\nspec: {image: a, build: {repository: 'https://example.com/o/a.git', dockerfle: x}}\n---\n\
             apiVersion: tinyforge.dev/v1alpha1\nkind: Project\nmetadata: {name: b}\nspec: {image: b, build: {repository: 'ssh://h/b', context: ../x, timeoutSeconds: 0}}\n---\n\
             apiVersion: tinyforge.dev/v1alpha1\nkind: Project\nmetadata: {name: c}\nspec: {image: c, build: {repository: 'file:///srv/c', branches: [main], args: {V: '1'}}}\n",
        );
        assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
        assert!(
            m.errors[0]
                .message
                .contains("spec.build.dockerfle: unknown field, did you mean `dockerfile`?"),
            "{}",
            m.errors[0]
        );
        let mut status = crate::api::ProjectStatus::default();
        let b = &m.projects[0].resource;
        let problem = crate::engine::spec::assess_project("b", &b.spec, 1, &mut status).unwrap();
        assert!(problem.contains("build.repository"), "{problem}");
        assert!(problem.contains("build.context"), "{problem}");
        assert!(problem.contains("build.timeoutSeconds"), "{problem}");
        assert_eq!(status.conditions[0].reason, "InvalidSpec");
        let c = &m.projects[1].resource;
        assert!(crate::engine::spec::assess_project("c", &c.spec, 1, &mut status).is_none());
    }

    #[test]
    fn unknown_fields_are_errors_with_a_suggestion() {
        let m = parse(
            "apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {name: prod}\nspec: {projectRef: demo, pinedTag: '1.0.0'}\n---\n\
             apiVersion: tinyforge.dev/v1alpha1\nkind: Project\nmetadata: {name: demo}\nspec: {image: demo, container: {env: [{name: A, vaule: b}]}, healthCheck: {pathh: /}, zzz: 1}\n---\n\
             apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {name: good}\nspec: {projectRef: demo}\n",
        );
        assert_eq!(m.stages.len(), 1, "only the good Stage is kept");
        assert!(m.projects.is_empty());
        assert_eq!(m.errors.len(), 2, "{:?}", m.errors);
        let stage = m.errors[0].to_string();
        assert!(stage.contains("document 1"), "{stage}");
        assert!(stage.contains("Stage/prod"), "{stage}");
        assert!(
            stage.contains("spec.pinedTag: unknown field, did you mean `pinnedTag`?"),
            "{stage}"
        );
        let project = &m.errors[1].message;
        assert!(
            project.contains("spec.container.env[0].vaule: unknown field, did you mean `value`?"),
            "{project}"
        );
        assert!(
            project.contains("spec.healthCheck.pathh: unknown field, did you mean `path`?"),
            "{project}"
        );
        // Nothing close: no guess.
        assert!(project.contains("spec.zzz: unknown field"), "{project}");
        assert!(
            !project.contains("spec.zzz: unknown field, did"),
            "{project}"
        );
    }

    #[test]
    fn duplicates_are_rejected() {
        let doc = "apiVersion: tinyforge.dev/v1alpha1\nkind: Project\nmetadata: {name: demo}\nspec: {image: demo}\n";
        let mut m = Manifests::default();
        parse_into(Path::new("a.yaml"), doc, &mut m);
        parse_into(Path::new("b.yaml"), doc, &mut m);
        check_duplicates(&mut m);
        assert!(m.projects.is_empty());
        assert!(m.errors[0].message.contains("a.yaml"));
    }
}
