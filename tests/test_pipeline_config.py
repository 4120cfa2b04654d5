"""Config errors are caught before Ray starts and name the field."""
import pytest

from pipeline.config import ConfigError, config_from_dict, load_config


def _cfg(tmp_path, **overrides):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    data = {"inputs": [{"path": str(tmp_path / "a.jsonl"), "category": "web"}], "output": str(tmp_path / "out")}
    data.update(overrides)
    return data


def test_defaults_and_relative_paths(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "job.yaml").write_text("inputs:\n  - {path: a.jsonl, category: web}\noutput: out\n")
    cfg = load_config(tmp_path / "job.yaml")
    assert cfg.inputs[0].path == str(tmp_path / "a.jsonl") and cfg.output == str(tmp_path / "out")
    assert cfg.dedup.threshold == 0.8 and cfg.dedup.num_perm == 128 and cfg.tokenizer.vocab_size == 100_534


@pytest.mark.parametrize("overrides, message", [
    ({"dedupe": {}}, "dedupe: unknown key"),
    ({"dedup": {"threshold": 1.5}}, "dedup.threshold: 1.5 is out of range"),
    ({"dedup": {"num_perm": "many"}}, "dedup.num_perm: expected an integer"),
    ({"langid": {"threshold": -0.1}}, "langid.threshold"),
    ({"langid": {"model": "/nonexistent/lid.bin"}}, "langid.model: no such file"),
    ({"inputs": []}, "inputs: at least one"),
    ({"inputs": [{"path": "/nonexistent/*.jsonl", "category": "web"}]}, "inputs[0].path: no such file"),
    ({"inputs": [{"path": "/", "category": "blogs"}]}, "inputs[0].category: unknown category 'blogs'"),
    ({"inputs": [{"path": "/"}]}, "inputs[0]: set either category"),
    ({"inputs": [{"path": "/", "category": "web", "colour": 1}]}, "inputs[0].colour: unknown key"),
    ({"inputs": [{"path": "/", "category": "web", "format": "csv"}]}, "inputs[0].format: 'csv'"),
    ({"mixing": {"sequence_length": 1}}, "mixing.sequence_length"),
    ({"ray": {"parquet_reader": "v3"}}, "ray.parquet_reader: 'v3' is not one of v1, v2"),
    ({"mixing": {"sequence_length": 2**31}}, "mixing.sequence_length: 2147483648 is out of range"),
    # 10^9-token rows: a 4.8 TB shard buffer that failed as a MemoryError after clean and tokenizer
    ({"mixing": {"sequence_length": 10**9}}, "GiB on the driver, more than half of its"),
    # YAML's .nan and .inf: NaN fails every comparison, so only an explicit check stops it.
    ({"dedup": {"threshold": float("nan")}}, "dedup.threshold: expected a finite number, got nan"),
    ({"langid": {"threshold": float("nan")}}, "langid.threshold: expected a finite number"),
    ({"tokenizer": {"temperature": float("nan")}}, "tokenizer.temperature: expected a finite number"),
    ({"dedup": {"num_perm": float("inf")}}, "dedup.num_perm: expected an integer, got inf"),
    ({"dedup": {"num_perm": float("nan")}}, "dedup.num_perm: expected an integer, got nan"),
    ({"dedup": {"seed": -1}}, "dedup.seed: -1 is out of range"),
    ({"mixing": {"seed": 2**32}}, "mixing.seed: 4294967296 is out of range"),
    ({"read": {"raw_preview_chars": -5}}, "read.raw_preview_chars: -5 is out of range"),
    ({"mixing": {"total_tokens": 1}}, "mixing.total_tokens: 1 is out of range (must be >= 16384)"),
    ({"ray": {"object_store_memory": -5}}, "ray.object_store_memory: -5 is out of range"),
    # In range each, but datasketch finds no banding: these used to fail after read and language ID.
    ({"dedup": {"threshold": 0.99}}, "dedup.threshold 0.99 with dedup.num_perm 128: no LSH banding fits"),
    ({"dedup": {"num_perm": 8}}, "dedup.threshold 0.8 with dedup.num_perm 8: no LSH banding fits"),
    ({"inputs": [{"path": "/", "category": "web", "text_field": ""}]}, "inputs[0].text_field: must name a field"),
    ({"inputs": [{"path": "bogus://bucket/x.jsonl", "category": "web"}]}, "inputs[0].path: cannot open bogus://"),
    ({"inputs": [{"path": "memory://xdp-test/none.jsonl", "category": "web"}]},
     "inputs[0].path: no such file or directory: memory://xdp-test/none.jsonl"),
])
def test_bad_fields_are_named(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_cfg(tmp_path, **overrides))
    assert message in str(err.value)


def test_a_remote_input_that_exists_passes(tmp_path):
    import fsspec

    with fsspec.open("memory://xdp-test/there.jsonl", "wb") as fh:
        fh.write(b'{"text": "x"}\n')
    config_from_dict(_cfg(tmp_path, inputs=[{"path": "memory://xdp-test/there.jsonl", "category": "web"}]))


def test_user_langid_files_are_loaded_with_the_config(tmp_path):
    # Checked for existence only, they used to fail first in a Ray worker, after the read stage.
    (tmp_path / "lid.bin").write_text('{"text": "not a model"}\n')
    with pytest.raises(ConfigError, match="langid.model: .*not a fastText model"):
        config_from_dict(_cfg(tmp_path, langid={"model": str(tmp_path / "lid.bin")}))
    (tmp_path / "rules.json").write_text('{"languages": "en"}')
    with pytest.raises(ConfigError, match="langid rules .*rules.json"):
        config_from_dict(_cfg(tmp_path, langid={"rules": str(tmp_path / "rules.json")}))


def test_empty_paths_are_errors_not_the_config_directory(tmp_path):
    # A relative path is resolved against the config's directory; "" used to become that directory.
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "job.yaml").write_text('inputs:\n  - {path: a.jsonl, category: web}\noutput: ""\n')
    with pytest.raises(ConfigError, match="output: required"):
        load_config(tmp_path / "job.yaml")
    (tmp_path / "job.yaml").write_text('inputs:\n  - {path: "", category: web}\noutput: out\n')
    with pytest.raises(ConfigError, match=r"inputs\[0\].path: required"):
        load_config(tmp_path / "job.yaml")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("inputs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "latin1.yaml").write_bytes("output: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")


def test_a_key_given_twice_or_a_config_that_is_no_mapping_is_refused(tmp_path):
    """PyYAML would keep the second `dedup:` and drop the first section unseen."""
    (tmp_path / "job.yaml").write_text("inputs: [{path: a.jsonl, category: web}]\ndedup: {threshold: 0.7}\n"
                                       "output: out\ndedup: {num_perm: 64}\n")
    with pytest.raises(ConfigError, match="not valid YAML: line 4: the key 'dedup' is given twice"):
        load_config(tmp_path / "job.yaml")
    (tmp_path / "job.yaml").write_text("inputs: [{path: a.jsonl, category: web, category: code}]\noutput: out\n")
    with pytest.raises(ConfigError, match="line 1: the key 'category' is given twice"):
        load_config(tmp_path / "job.yaml")
    for text, kind in (("false\n", "bool"), ("[]\n", "list")):
        (tmp_path / "job.yaml").write_text(text)
        with pytest.raises(ConfigError, match=f"expected a mapping of sections .*, got {kind}$"):
            load_config(tmp_path / "job.yaml")
    with pytest.raises(ConfigError, match="a directory, not a YAML file"):
        load_config(tmp_path)


def test_cli_reports_missing_files_without_a_traceback(capsys):
    from pipeline.cli import main

    assert main(["langid", "/nonexistent/in.jsonl", "/tmp/never-written.jsonl"]) == 1
    err = capsys.readouterr().err
    assert "No such file or directory: /nonexistent/in.jsonl" in err and "Traceback" not in err
    assert main(["clean", "--config", "/nonexistent/job.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["dedup", "{tmp}/in.jsonl", "{tmp}/out", "--no-exact", "--no-near"], "leaves nothing to do"),
    (["demo", "--output", "{tmp}/in.jsonl"], "exists and is not a directory"),
    (["run", "--config", "{tmp}/job.yaml", "--steps", ""], "unknown step ''"),
    (["run", "--config", "{tmp}/job.yaml", "--steps", "tokenizer"], "the config disables it"),
    # a flag's error names the flag, not the config key it stands for
    (["dedup", "{tmp}/in.jsonl", "{tmp}/out", "--num-perm", "0"], "--num-perm: 0 is out of range"),
    (["dedup", "{tmp}/in.jsonl", "{tmp}/out", "--threshold", "0.99", "--num-perm", "4"],
     "--threshold 0.99 with --num-perm 4: no LSH banding fits"),
    (["langid", "{tmp}/in.jsonl", "{tmp}/o.jsonl", "--threshold", "2"], "--threshold: 2.0 is out of range"),
    (["langid", "{tmp}/in.jsonl", "{tmp}/o.jsonl", "--model", "{tmp}/none.bin"], "--model: no such file"),
    (["train-tokenizer", "--input", "{tmp}/in.jsonl", "--output", "{tmp}/out", "--vocab-size", "5"],
     "--vocab-size: 5 is out of range"),
    (["demo", "--output", "{tmp}/out", "--train-steps", "-1"], "--train-steps must be 0 (no training) or >= 2"),
])
def test_cli_commands_that_could_do_nothing_or_the_wrong_thing_say_so(tmp_path, capsys, argv, message):
    """Refused with one line (exit 2) before any work starts."""
    from pipeline.cli import main

    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "x"}\n')
    (tmp_path / "job.yaml").write_text(f"inputs: [{{path: {tmp_path}/in.jsonl, category: web}}]\n"
                                       f"output: {tmp_path}/out\ntokenizer: {{enabled: false}}\n")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("section", ["tokenizer", "mixing"])
@pytest.mark.parametrize("share, message", [(-5, "share must be a non-negative number, got -5"),
                                            (".nan", "got nan"), ("many", "got 'many'")])
def test_a_bad_ratio_file_fails_with_the_config(tmp_path, section, share, message):
    """Checked when the config loads (before Ray and the clean step), naming the field and the file."""
    from mixing.ratios import default_ratios_path

    bad = tmp_path / "bad.yaml"
    bad.write_text(default_ratios_path().read_text().replace("web: 72.91", f"web: {share}"))
    with pytest.raises(ConfigError) as err:
        config_from_dict(_cfg(tmp_path, **{section: {"ratios": str(bad)}}))
    assert str(err.value).startswith(f"{section}.ratios: ratios {bad}: categories.web: ")
    assert message in str(err.value)


def test_flags_that_bypass_yaml_are_range_checked_for_nan_too():
    """`xdp dedup --threshold nan` builds the section from argparse floats, not YAML."""
    from pipeline.config import DedupConfig, TokenizerConfig, validate_dedup, validate_tokenizer

    with pytest.raises(ConfigError, match="dedup.threshold: expected a finite number, got nan"):
        validate_dedup(DedupConfig(threshold=float("nan")))
    with pytest.raises(ConfigError, match="tokenizer.temperature: expected a finite number, got inf"):
        validate_tokenizer(TokenizerConfig(temperature=float("inf")))


def test_an_unknown_option_is_reported_with_its_commands_usage(capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["mix", "--config", "job.yaml", "--outt", "x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "xdp mix: error: unrecognized arguments: --outt x" in err
