"""Issue 10's additions as a user meets them: the official recipes, regression (STS-B style) from training to
the server, header-less TSVs (CoLA style) with Matthews correlation, files that start with a byte-order mark,
and the pooler trained with the head."""

from __future__ import annotations

import json

import httpx
import pytest

from adamix_deploy.config import RECIPES
from adamix_deploy.contracts.errors import DataError
from adamix_deploy.data import read_classification
from adamix_deploy.testing.processes import ServerProcess

from helpers import SHARED_DATA
from helpers.cli import run
from helpers.data import sentiment_rows, similarity_rows, write_table


def config_of(folder) -> dict:
    return json.loads((folder / "adamix_config.json").read_text())


@pytest.fixture(scope="module")
def similarity_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stsb")
    return write_table(folder / "train.tsv", similarity_rows(96, 1)), write_table(
        folder / "dev.tsv", similarity_rows(32, 2)
    )


# -- recipes ---------------------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "recipe"), [("adapter", "nlu-adapter"), ("lora", "nlu-lora")]
)  # fmt: skip
def test_auto_recipe_sets_the_official_nlu_settings(method, recipe, tiny_bert, sentiment_files, tmp_path):
    train_file, dev_file = sentiment_files
    run("adamix-train", "--model", tiny_bert, "--task", "classification", "--train-file", train_file,
        "--method", method, "--epochs", "1", "--quiet", "--output", tmp_path / "run")  # fmt: skip
    options = config_of(tmp_path / "run")["training"]["options"]
    expected = RECIPES[recipe]
    assert options["weight_decay"] == expected["weight_decay"] == 0.1
    assert options["warmup_ratio"] == 0.06 and options["consistency_weight"] == 1.0
    assert options["train_pooler"] is True
    mixture = options["mixture"]
    assert mixture["experts"] == 4 and mixture["share"] == "up" and mixture["init"] == "official"
    assert config_of(tmp_path / "run")["head"] == sorted(
        ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias", "classifier.weight"]
    )


@pytest.mark.integration
def test_nlg_recipe_and_options_typed_by_the_user_win(tiny_gpt2, e2e_files, tmp_path):
    train_file, _ = e2e_files
    run("adamix-train", "--model", tiny_gpt2, "--task", "generation", "--train-file", train_file,
        "--method", "lora", "--experts", "2", "--epochs", "1", "--batch-size", "16", "--quiet",
        "--output", tmp_path / "run")  # fmt: skip
    options = config_of(tmp_path / "run")["training"]["options"]
    assert options["mixture"]["experts"] == 2  # typed
    assert options["mixture"]["rank"] == 4 and options["mixture"]["alpha"] == 32.0
    assert options["mixture"]["lora_dropout"] == 0.1 and options["label_smoothing"] == 0.1
    assert options["consistency_weight"] == 100.0 and options["weight_decay"] == 0.01


@pytest.mark.integration
@pytest.mark.parametrize(("experts", "epochs"), [("1", 3), ("4", 6)])
def test_default_epochs_come_from_the_tuning(experts, epochs, tiny_bert, sentiment_files, tmp_path):
    """No --epochs: 3 for one module, twice that for a mixture (config.default_epochs, README benchmark)."""
    train_file, _ = sentiment_files
    run("adamix-train", "--model", tiny_bert, "--task", "classification", "--train-file", train_file,
        "--method", "lora", "--experts", experts, "--stop-after", "1", "--quiet", "--output", tmp_path / "run")  # fmt: skip
    assert config_of(tmp_path / "run")["training"]["options"]["epochs"] == epochs


@pytest.mark.integration
def test_recipe_none_keeps_the_plain_defaults(tiny_bert, sentiment_files, tmp_path):
    train_file, _ = sentiment_files
    run("adamix-train", "--model", tiny_bert, "--task", "classification", "--train-file", train_file,
        "--recipe", "none", "--epochs", "1", "--quiet", "--output", tmp_path / "run")  # fmt: skip
    options = config_of(tmp_path / "run")["training"]["options"]
    assert options["weight_decay"] == 0.0 and options["train_pooler"] is False


# -- regression ------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_regression_trains_evaluates_exports_and_serves_a_score(tiny_bert, similarity_files, tmp_path):
    train_file, dev_file = similarity_files
    result = run("adamix-train", "--model", tiny_bert, "--task", "regression", "--train-file", train_file,
                 "--eval-file", dev_file, "--label-column", "score", "--method", "lora", "--experts", "2",
                 "--epochs", "3", "--lr", "1e-2", "--quiet", "--output", tmp_path / "run")  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["metric"]["name"] == "pearson" and -1 <= summary["metric"]["value"] <= 1
    assert {"pearson", "spearman", "mse"} <= set(summary["eval"])
    evaluated = json.loads(run("adamix-eval", tmp_path / "run", "--data-file", dev_file).stdout)
    assert set(evaluated["routings"]) == {"average", "ensemble", "random", "expert:0", "expert:1"}
    assert evaluated["routings"]["average"]["pearson"] == pytest.approx(summary["eval"]["pearson"], abs=1e-6)

    run("adamix-export", "--merge", tmp_path / "run", "--output", tmp_path / "deploy", "--verify-file", dev_file)
    manifest = json.loads((tmp_path / "deploy" / "adamix_manifest.json").read_text())
    assert manifest["task"] == "regression" and manifest["labels"] is None
    assert manifest["parity"]["stages"]["onnx_fp32"]["max_abs_logit_diff"] < 1e-4
    assert manifest["validation"]["routings"]["average"]["pearson"] == pytest.approx(
        summary["eval"]["pearson"], abs=1e-5
    )

    with ServerProcess([tmp_path / "deploy"], log_dir=tmp_path) as server:
        pair = [["good great superb", "good great plain"], ["good great superb", "plain plain plain"]]
        body = httpx.post(f"{server.url}/v1/models/deploy/classify", json={"inputs": pair}, timeout=30).json()
        assert [set(r) for r in body["results"]] == [{"score"}, {"score"}]
        card = httpx.get(f"{server.url}/v1/models").json()["data"][0]
        assert card["task"] == "regression"
        generate = httpx.post(f"{server.url}/v1/models/deploy/generate", json={"prompt": "x"}, timeout=30)
        assert generate.status_code == 422 and "regression model" in generate.json()["error"]["message"]


@pytest.mark.integration
def test_regression_refuses_a_non_numeric_label(tiny_bert, sentiment_files, tmp_path):
    bad = write_table(tmp_path / "bad.tsv", [{"sentence1": "a", "sentence2": "b", "score": "high"}] * 4)
    result = run("adamix-train", "--model", tiny_bert, "--task", "regression", "--train-file", bad,
                 "--label-column", "score", "--quiet", "--output", tmp_path / "run", check=False, debug=False)  # fmt: skip
    assert result.returncode == 2 and "not a number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- header-less files, byte-order marks, Matthews correlation ------------------------------------------------------
def write_cola_like(path, rows: list[dict]) -> None:
    """CoLA's train/dev layout: no header; source, label, original label, sentence."""
    path.write_text("".join(f"src\t{r['label']}\t*\t{r['sentence']}\n" for r in rows))


@pytest.mark.integration
def test_headerless_tsv_by_column_position_with_mcc(tiny_bert, tmp_path):
    write_cola_like(tmp_path / "train.tsv", sentiment_rows(64, 1))
    write_cola_like(tmp_path / "dev.tsv", sentiment_rows(32, 2))
    columns = ["--no-header", "--text-column", "3", "--label-column", "1"]
    result = run("adamix-train", "--model", tiny_bert, "--task", "classification", "--train-file",
                 tmp_path / "train.tsv", "--eval-file", tmp_path / "dev.tsv", *columns, "--epochs", "1",
                 "--quiet", "--output", tmp_path / "run")  # fmt: skip
    summary = json.loads(result.stdout)
    assert -1 <= summary["eval"]["mcc"] <= 1 and summary["eval"]["examples"] == 32
    # adamix-eval reads the file the way training did (no header, the same positions)
    evaluated = json.loads(run("adamix-eval", tmp_path / "run", "--data-file", tmp_path / "dev.tsv").stdout)
    assert evaluated["routings"]["average"]["mcc"] == pytest.approx(summary["eval"]["mcc"], abs=1e-9)
    named = run("adamix-train", "--model", tiny_bert, "--task", "classification", "--train-file",
                tmp_path / "train.tsv", "--no-header", "--text-column", "sentence", "--quiet", "--output",
                tmp_path / "run2", check=False, debug=False)  # fmt: skip
    assert named.returncode == 2 and "column position" in named.stderr


def test_a_leading_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    file = tmp_path / "bom.tsv"
    file.write_bytes("\ufefflabel\tsentence\n1\tgood film\n0\tbad film\n".encode())
    examples = read_classification(file)
    assert [(e.text, e.label) for e in examples] == [("good film", "1"), ("bad film", "0")]
    with pytest.raises(DataError, match="no label column 'nope'"):
        read_classification(file, label_column="nope")


# -- one owner of the defaults: the CLI and the Python API build equal options ------------------------------------
def options_built_by_the_cli(monkeypatch, args: list[str]):
    """The TrainOptions `adamix-train ARGS` hands to `train`, caught in-process (nothing trains)."""
    from click.testing import CliRunner

    import adamix_deploy.train
    from adamix_deploy.cli import train_cli

    caught = {}

    def fake_train(options, resume=False, overwrite=False):
        caught["options"] = options
        return {}

    monkeypatch.setattr(adamix_deploy.train, "train", fake_train)
    result = CliRunner().invoke(train_cli, [*args, "--output", "out"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return caught["options"]


FILES = {"model": "m", "train_file": "t.tsv", "output": "out"}


@pytest.mark.parametrize(
    ("args", "chosen", "recipe"),
    [
        (["--task", "classification", "--method", "lora"], {"task": "classification", "method": "lora"}, "auto"),
        (["--task", "classification"], {"task": "classification"}, "auto"),
        (["--task", "generation", "--method", "lora", "--experts", "2", "--lora-alpha", "8", "--quiet"],
         {"task": "generation", "method": "lora", "experts": 2, "alpha": 8.0, "progress": False}, "auto"),
        (["--task", "regression", "--method", "head", "--no-train-pooler", "--label-column", "score"],
         {"task": "regression", "method": "head", "train_pooler": False, "label_column": "score"}, "auto"),
        (["--task", "classification", "--recipe", "nlu-adapter", "--method", "lora", "--no-header",
          "--text-column", "3", "--label-column", "1", "--targets", "query, key"],
         {"task": "classification", "method": "lora", "header": False, "text_column": "3", "label_column": "1",
          "targets": ["query", "key"]}, "nlu-adapter"),
    ],
)  # fmt: skip
def test_the_cli_and_the_python_api_build_equal_options(monkeypatch, args, chosen, recipe):
    from adamix_deploy.config import train_options

    built = options_built_by_the_cli(
        monkeypatch, ["--model", "m", "--train-file", "t.tsv", *args, "--recipe", recipe]
    )
    assert built == train_options(recipe, **FILES, **chosen)


def test_plain_train_options_equal_the_cli_without_a_recipe(monkeypatch):
    """`TrainOptions(...)` applies no recipe and has the CLI's defaults: a mixture trains 6 epochs either way."""
    from adamix_deploy.config import MixtureSpec, TrainOptions

    built = options_built_by_the_cli(
        monkeypatch, ["--model", "m", "--train-file", "t.tsv", "--task", "classification", "--recipe", "none"]
    )
    direct = TrainOptions(**FILES, task="classification", mixture=MixtureSpec())
    assert built == direct and direct.epochs == 6 and direct.lr == 3e-3 and direct.recipe == "none"
    assert TrainOptions(**FILES, task="classification", mixture=MixtureSpec(experts=1)).epochs == 3


def test_train_options_refuses_what_is_not_an_option():
    from adamix_deploy.config import train_options
    from adamix_deploy.contracts.errors import AdamixError

    with pytest.raises(AdamixError, match="unknown training option 'lora_alpha'"):
        train_options(**FILES, task="classification", lora_alpha=8.0)
    with pytest.raises(AdamixError, match="recipe must be one of"):
        train_options("paper", **FILES, task="classification")


# -- STS-B as GLUE distributes it --------------------------------------------------------------------------------
STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2"]


@pytest.mark.integration
def test_stsb_as_distributed_finds_its_score_column(tiny_bert, tmp_path):
    """GLUE's STS-B: ten columns, the target called `score`; no column option needed."""
    rows = [{**dict.fromkeys(STSB_HEADER, "x"), **row} for row in similarity_rows(48, 3)]
    train_file = write_table(tmp_path / "train.tsv", rows)
    result = run("adamix-train", "--model", tiny_bert, "--task", "regression", "--train-file", train_file,
                 "--eval-file", train_file, "--method", "lora", "--experts", "2", "--epochs", "1", "--quiet",
                 "--output", tmp_path / "run")  # fmt: skip
    assert json.loads(result.stdout)["metric"]["name"] == "pearson"
    examples = read_classification(train_file, regression=True)
    assert (examples[0].text, examples[0].text_pair, examples[0].label) == (
        rows[0]["sentence1"],
        rows[0]["sentence2"],
        rows[0]["score"],
    )


def test_a_missing_label_column_names_what_was_tried(tmp_path):
    file = write_table(tmp_path / "f.tsv", [{"sentence1": "a", "sentence2": "b", "target": "1"}] * 2)
    with pytest.raises(DataError, match=r"no label column: expected one of label, score \(columns: sentence1, "):
        read_classification(file, regression=True)
    with pytest.raises(DataError, match=r"no label column: expected one of label \(columns"):
        read_classification(file)  # classification: a score is no class label


@pytest.mark.skipif(not (SHARED_DATA / "glue" / "STS-B" / "dev.tsv").is_file(), reason="../shared/data absent")
def test_the_real_stsb_dev_file_reads_as_regression():
    examples = read_classification(SHARED_DATA / "glue" / "STS-B" / "dev.tsv", regression=True)
    assert len(examples) == 1500 and all(0 <= float(e.label) <= 5 and e.text_pair for e in examples)
