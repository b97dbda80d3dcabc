//! The layout is the architecture: a module may use only modules of its own layer or below
//! (docs/ARCHITECTURE.md). This reads every `crate::…` path in `src/` (comments aside) and fails
//! on an arrow pointing up, so the rule holds without anyone remembering it.

use std::path::Path;

/// Top-level modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    &["api", "image", "crypto", "metrics"],
    &["engine"],
    &["ingest"],
    &["store"],
    &["adapters"],
    &["sources"],
    &["modes"],
    &["cli"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut upward = Vec::new();
    let mut unknown = Vec::new();
    for path in &all {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy();
        let top = top.trim_end_matches(".rs");
        if matches!(top, "lib" | "main") {
            continue;
        }
        let Some(own) = layer(top) else {
            unknown.push(top.to_string());
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let used: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used.is_empty() {
                    // `crate::{a, b}` would hide its modules from this check.
                    unknown.push(format!("{}:{}: crate::{{…}}", rel.display(), n + 1));
                    continue;
                }
                match layer(&used) {
                    Some(l) if l > own => upward.push(format!(
                        "{}:{}: {top} uses {used}: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    )),
                    Some(_) => {}
                    None => unknown.push(used),
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS: {unknown:?}"
    );
    assert!(
        upward.is_empty(),
        "arrows pointing up:\n{}",
        upward.join("\n")
    );
}
