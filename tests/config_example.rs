//! The example config is the manual: it must parse with no unknown key, and document
//! exactly the built-in defaults.

use std::path::Path;

use herald::config::Config;

#[test]
fn example_config_parses_without_unknown_keys_and_matches_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/herald.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    let (config, warnings) = Config::parse(&src, &path).unwrap();
    assert!(
        warnings.is_empty(),
        "unknown keys in the example config: {warnings:?}"
    );
    assert_eq!(
        config,
        Config::default(),
        "the example config and the defaults disagree"
    );
}

#[test]
fn every_option_of_the_config_appears_in_the_example() {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/herald.toml"))
            .unwrap();
    // Serialising the defaults lists every key the config knows.
    let defaults = toml::Value::try_from(herald::config::Config::default()).unwrap();
    for (section, table) in defaults.as_table().unwrap() {
        assert!(
            src.contains(&format!("[{section}]")),
            "section [{section}] is not documented"
        );
        for key in table.as_table().unwrap().keys() {
            let documented = src.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
            });
            assert!(documented, "{section}.{key} is not in deploy/herald.toml");
        }
    }
}

#[test]
fn the_commented_output_example_parses_without_unknown_keys() {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/herald.toml"))
            .unwrap();
    // The `# [outputs.house]` block, uncommented, up to the end of the file.
    let block: String = src
        .lines()
        .skip_while(|l| *l != "# [outputs.house]")
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    assert!(block.starts_with("[outputs.house]"), "no example output");
    let (config, warnings) = Config::parse(&block, Path::new("example")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let house = &config.outputs["house"];
    assert_eq!(house.server, "snapserver.lan:4953");
    assert_eq!(house.latency_ms, 1000);
}
