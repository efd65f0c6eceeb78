//! The classifier against a corpus of real-world statements (sysbench, Django, Rails,
//! Hibernate, WordPress, Laravel, mysqldump, MySQL 8 and MariaDB syntax), each labelled with
//! the destination the routing table gives it.

use rwproxy::classifier::{Destination, Hint, classify};

fn label(d: Destination) -> &'static str {
    match d {
        Destination::Read => "read",
        Destination::Primary => "primary",
        Destination::All => "all",
        Destination::Last => "last",
    }
}

fn corpus() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/statements.tsv"))
        .expect("corpus");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(d, s)| (d.to_string(), s.replace("\\n", "\n")))
        .collect()
}

#[test]
fn corpus_is_classified_as_labelled() {
    let corpus = corpus();
    assert!(corpus.len() >= 300, "corpus has {} statements", corpus.len());
    let mut wrong = Vec::new();
    let mut unsafe_reads = Vec::new();
    for (expected, sql) in &corpus {
        // A primary hint sends any statement to the primary.
        let class = classify(sql);
        let got = if class.hint == Some(Hint::Primary) { "primary" } else { label(class.destination) };
        if got != expected {
            wrong.push(format!("{expected} → {got}: {sql:?}"));
            if got == "read" {
                unsafe_reads.push(sql.clone());
            }
        }
    }
    assert!(
        unsafe_reads.is_empty(),
        "statements that must not reach a replica were classified READ: {unsafe_reads:#?}"
    );
    assert!(wrong.is_empty(), "{} of {} misclassified:\n{}", wrong.len(), corpus.len(), wrong.join("\n"));
}
