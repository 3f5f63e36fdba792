"""The real study's analysis scripts choose the runs the committed analyses measured: studies/real/prompt_mass.py EPT's
cell at its chosen stage-1 rate, one run per prompt length; studies/real/analyze_selected.py every method's selected
run of each sampling at 10 shots. A wrong folder or cell is one line and exit 2."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from medpeft.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "benchmarks" / "real"
METHODS = ["linear", "mlp", "partial", "full", "bitfit", "lora", "adapter", "ssf", "vp", "vpt", "ept"]


def _script(name: str):
    sys.path.insert(0, str(ROOT / "studies" / "real"))  # its siblings report.py and keep_logits.py
    try:
        spec = importlib.util.spec_from_file_location(f"real_{name}", ROOT / "studies" / "real" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "studies" / "real"))
    return module


@pytest.fixture(scope="module")
def prompt_mass():
    return _script("prompt_mass")


@pytest.fixture(scope="module")
def keep_logits():
    return _script("keep_logits")


@pytest.fixture(scope="module")
def analyze_selected():
    return _script("analyze_selected")


@pytest.mark.parametrize("dataset", ["pneumoniamnist", "br35h"])
def test_the_cell_runs_are_those_the_committed_analysis_measured(prompt_mass, dataset):
    runs = prompt_mass.cell_runs(REAL / dataset / "bench", 10, 2)
    analysed = json.loads((REAL / dataset / "prompt_mass" / "analysis.json").read_text())["runs"]
    assert [r.key for r in runs] == [name for name, r in analysed.items() if r["label"] == "ept"]
    assert len({r.spec.train.lr for r in runs}) == 1  # one rate: the cell's stage-1 choice
    assert sorted(r.model.options.get("prompt_length", 100) for r in runs) == [1, 10, 50, 100]


def test_a_cell_without_the_length_search_is_refused_in_one_line(prompt_mass, tmp_path):
    lines = (REAL / "br35h" / "bench" / "runs.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "runs.jsonl").write_text("".join(x for x in lines if "prompt_" not in json.loads(x)["key"]))
    with pytest.raises(UserError, match=r"EPT's 10-shot cell of sampling 2 has no stage-2 run"):
        prompt_mass.cell_runs(tmp_path, 10, 2)


def test_a_wrong_folder_or_cell_is_one_line_and_exit_2(prompt_mass, tmp_path, capsys):
    for argv in ([str(tmp_path)], [str(REAL / "br35h"), "--exp", "9"]):
        with pytest.raises(SystemExit) as stop:
            prompt_mass.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 2 and err[0].startswith("usage:"), err  # argparse: usage + error
    assert "EPT's 10-shot cell of sampling 9 has no stage-2 run" in err[1]


def test_a_wrong_folder_or_shot_count_is_one_line_and_exit_2(analyze_selected, tmp_path, capsys):
    for argv, culprit in (([str(tmp_path)], str(tmp_path)), ([str(REAL / "br35h"), "--shots", "7"], "at 7 shots")):
        with pytest.raises(SystemExit) as stop:
            analyze_selected.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 2 and err[0].startswith("usage:") and culprit in err[1], err


def test_keep_logits_bad_numbers_or_folder_are_one_line_and_exit_2(keep_logits, tmp_path, capsys):
    cases = (
        (["--shots", "ten"], "argument --shots: invalid numbers value: 'ten'"),
        (["--exps", "1,,2"], "argument --exps: invalid numbers value: '1,,2'"),
        ([], f"{tmp_path.parent / 'study.yaml'}: No such file"),  # the bench folder of no study
    )
    for extra, culprit in cases:
        with pytest.raises(SystemExit) as stop:
            keep_logits.main([str(tmp_path), str(tmp_path / "out"), "--methods", "ept", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and err[0].startswith("usage:") and culprit in err[-1], err  # usage may wrap
        assert [x for x in err if "error" in x] == [err[-1]], err  # one error line
    assert not (tmp_path / "out").exists()  # nothing written
