//! `examples/guide_model/README.md` shows what quantnet adds to the guide model's code: the lines
//! removed and added between `float/` (the user's code before) and the quantized version, and
//! how many. This test fails when the README no longer matches the two programs.

use std::path::Path;

/// The lines of `new` added to `old` and the lines of `old` removed, in order, by a longest
/// common subsequence of whole lines (what `diff` shows, hunks aside).
fn line_diff<'a>(old: &[&'a str], new: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let (n, m) = (old.len(), new.len());
    // lcs[i][j]: the longest common subsequence of old[i..] and new[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            added.push(new[j]);
            j += 1;
        } else {
            removed.push(old[i]);
            i += 1;
        }
    }
    (added, removed)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_readme_shows_the_lines_quantnet_adds_to_the_guide_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("guide_model");
    let readme = read(&dir.join("README.md"));
    let mut total = 0;
    for file in ["model.rs", "training.rs"] {
        let (old, new) = (read(&dir.join("float").join(file)), read(&dir.join(file)));
        let (old, new): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
        let (added, removed) = line_diff(&old, &new);
        // The README's block for this file: ```diff after a line naming it.
        let start = (readme.find(&format!("```diff\n--- float/{file}")))
            .unwrap_or_else(|| panic!("README.md has no ```diff block for {file}"));
        let block = &readme[start..];
        let block = &block[..block[3..].find("```").expect("an unclosed block") + 3];
        let shown = |sign: char| -> Vec<&str> {
            (block.lines().skip(3))
                .filter(|l| l.starts_with(sign))
                .map(|l| &l[1..])
                .collect()
        };
        assert_eq!(shown('+'), added, "{file}: the README's added lines");
        assert_eq!(shown('-'), removed, "{file}: the README's removed lines");
        let count = added.iter().filter(|l| !l.trim().is_empty()).count();
        assert!(
            readme.contains(&format!("`{file}`: {count} added lines")),
            "README.md should say `{file}`: {count} added lines"
        );
        total += count;
    }
    assert!(
        readme.contains(&format!("{total} added lines in all")),
        "README.md should say {total} added lines in all"
    );
}

#[test]
fn the_diff_finds_added_and_removed_lines() {
    let old = ["a", "b", "c", "d"];
    let new = ["a", "x", "c", "d", "y"];
    assert_eq!(line_diff(&old, &new), (vec!["x", "y"], vec!["b"]));
    assert_eq!(line_diff(&[], &["z"]), (vec!["z"], vec![]));
}
