//! The CRDs in `crds/` are generated from `src/api` and must not go stale; their schemas must be
//! structural (a `type` on every node) so the API server accepts them; and the examples must be
//! valid against the same types.

use std::path::Path;

fn crds() -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(&tiny_forge::crds_yaml().unwrap()).unwrap()
}

#[test]
fn committed_crds_match_the_generated_ones() {
    let committed = std::fs::read_to_string("crds/tinyforge.dev.yaml")
        .expect("crds/tinyforge.dev.yaml exists (make crds)");
    assert!(
        committed == tiny_forge::crds_yaml().unwrap(),
        "crds/tinyforge.dev.yaml is stale: run `make crds` and commit it"
    );
}

fn assert_structural(node: &serde_json::Value, path: &str) {
    let Some(obj) = node.as_object() else { return };
    let escape = obj.contains_key("x-kubernetes-int-or-string")
        || obj.contains_key("x-kubernetes-preserve-unknown-fields");
    assert!(
        obj.contains_key("type") || escape,
        "{path} has no type: {node}"
    );
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = obj.get(key).and_then(|v| v.as_array()) {
            for branch in list {
                // Structural schemas allow value validations only inside these.
                let b = branch.as_object().unwrap();
                assert!(
                    !b.contains_key("type") || b.len() == 1,
                    "{path}.{key} carries types or descriptions: {branch}"
                );
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            assert_structural(child, &format!("{path}.{name}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(extra, &format!("{path}{{}}"));
    }
}

#[test]
fn schemas_are_structural_with_printer_columns_short_names_and_category() {
    let crds = crds();
    assert_eq!(crds.len(), 2);
    for crd in &crds {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
        assert_eq!(crd["spec"]["group"], "tinyforge.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["categories"][0], "tinyforge");
        assert!(crd["spec"]["names"]["shortNames"][0].is_string());
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(
            version["subresources"]["status"].is_object(),
            "{kind} has a status subresource"
        );
        assert_structural(&version["schema"]["openAPIV3Schema"], kind);
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(columns.contains(&"Age"), "{kind}: {columns:?}");
        if kind == "Stage" {
            for c in ["Project", "Tag", "Phase", "Ready"] {
                assert!(columns.contains(&c), "Stage lacks {c}: {columns:?}");
            }
        }
    }
}

#[test]
fn every_spec_field_is_documented() {
    fn walk(node: &serde_json::Value, path: &str) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                if !["metadata", "apiVersion", "kind"].contains(&name.as_str()) {
                    assert!(child.get("description").is_some(), "{p} has no description");
                }
                walk(child, &p);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, path);
        }
    }
    for crd in crds() {
        walk(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "");
    }
}

#[test]
fn the_examples_are_valid() {
    let m = tiny_forge::store::load_dir(Path::new("examples/standalone")).unwrap();
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    assert_eq!(m.projects.len(), 1);
    assert_eq!(m.stages.len(), 2);
    let project = &m.projects[0].resource.spec;
    for stage in &m.stages {
        if let Err(e) = tiny_forge::engine::Effective::new(project, &stage.resource.spec) {
            panic!("{:?}: {e:?}", stage.resource.metadata.name);
        }
    }
}
