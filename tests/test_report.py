"""`cleanpipe run` end to end on digits, and `cleanpipe report`'s self-contained HTML."""

import json
import re
import time
from pathlib import Path

import pytest


@pytest.mark.slow
def test_run_on_digits_is_fast_and_ends_with_a_summary_and_a_report(tmp_path, cli):
    run = tmp_path / "demo"
    t0 = time.perf_counter()
    code, out, err = cli("run", run, "--device", "cpu")
    elapsed = time.perf_counter() - t0
    assert code == 0, err
    assert elapsed < 120, elapsed  # the README's main job: under 2 minutes on 2 cores
    flat = " ".join(out.split())  # rich wraps long lines
    assert "done on the labels with 40% synthetic symmetric noise added (a benchmark):" in flat  # the demo says it is one
    assert "test accuracy" in flat and "report.html" in out.replace("\n", "") and "cleanpipe review" in flat  # paths wrap mid-word
    for stage in ("noise", "crossval", "prune", "train", "report"):
        assert (run / stage / "manifest.json").is_file(), stage
    m = json.loads((run / "train" / "manifest.json").read_text())
    assert m["parameters"]["method"] == "coteaching" and m["metrics"]["test_accuracy"] >= 0.95
    code, out, err = cli("run", run, "--device", "cpu")  # everything current: training is not repeated
    assert code == 0 and "train: up to date, skipped" in out


def _references(page: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)


def test_report_html_references_only_inlined_or_existing_files(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "pairflip", "--rate", 0.3)[0] == 0
    assert cli("crossval", run, "--folds", 2, "--epochs", 3, "--device", "cpu")[0] == 0
    assert cli("prune", run, "--top", 0)[0] == 0
    assert cli("train", run, "--epochs", 2, "--device", "cpu")[0] == 0
    code, out, err = cli("report", run, "--top", 8)
    assert code == 0, err
    folder = run / "report"
    page = (folder / "report.html").read_text()
    refs = _references(page)
    assert len(refs) == 5  # noise matrix, issues per class, quality, training curves, suspicious images
    for ref in refs:
        assert ref.startswith("data:image/png;base64,") or (folder / ref).is_file(), ref[:80]
    for png in ("noise_matrix.png", "issues_per_class.png", "label_quality.png", "training_curves.png", "suspicious.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG", png
    assert "test accuracy" in page and "precision / recall / F1" in page
    assert "audit:" not in page  # no audit stage, no audit lines


def test_report_lists_the_audit_counts(noisy_digits_run, tmp_path, cli):
    import json
    import shutil

    run = tmp_path / "r"
    shutil.copytree(noisy_digits_run, run)
    assert cli("audit", run, "--epochs", 2)[0] == 0
    code, out, err = cli("report", run, "--top", 0)
    assert code == 0, err
    page = (run / "report" / "report.html").read_text()
    m = json.loads((run / "audit" / "manifest.json").read_text())["metrics"]
    assert f"<th>audit: outliers</th><td>{m['n_outlier']:,}</td>" in page
    assert "audit: exact / near duplicates" in page and "audit: test rows copying training rows" in page


def test_report_without_a_prune_stage_is_one_clear_line(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.2)[0] == 0
    code, out, err = cli("report", run)
    assert code == 2 and "cleanpipe prune" in err and len(err.strip().splitlines()) == 1
    assert not Path(run / "report").exists()
