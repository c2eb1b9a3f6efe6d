"""benchmarks/demo.py: the per-seed table and the check `make demo` ends with."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("demo_benchmark", ROOT / "benchmarks" / "demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def fake_run(folder: Path, val_auc=0.98, study_kappa=0.9, pointing=0.85, marker=0.0, n_images=60) -> Path:
    folder.mkdir(parents=True)
    level = lambda auc, kappa: {"auc": auc, "kappa": kappa}  # noqa: E731
    (folder / "metrics.json").write_text(json.dumps({
        "val": {"image": level(val_auc, 0.8), "study": level(0.99, 0.85)},
        "test": {"image": level(0.97, 0.82), "study": level(0.99, study_kappa)},
        "threshold": 0.42, "epochs_run": 13, "best_epoch": 12, "train_seconds": 500.0}))
    pd.DataFrame([
        {"method": "gradcam", "layer": "relu", "pointing_game": pointing, "distractor_peak": marker,
         "n_images": n_images},
        {"method": "random_grid", "layer": "relu", "pointing_game": 0.1, "distractor_peak": 0.02, "n_images": n_images},
    ]).to_csv(folder / "cam_eval.csv", index=False)
    return folder


def documented(path: Path, runs) -> Path:
    rows = [{"seed": i, **demo.run_numbers(r), "demo_seconds": 700.0} for i, r in enumerate(runs)]
    path.write_text(json.dumps({"cpu": "Test CPU", "runs": rows, "summary": demo.summarize(rows)}))
    return path


def test_run_numbers_read_the_runs_own_files(tmp_path):
    numbers = demo.run_numbers(fake_run(tmp_path / "r", val_auc=0.971, pointing=0.8333, marker=0.0167))
    assert numbers["val_auc"] == 0.971 and numbers["test_study_kappa"] == 0.9
    assert numbers["pointing_game"] == 0.8333 and numbers["marker_peak"] == 0.0167  # the gradcam row, not random
    assert numbers["epochs"] == 13 and numbers["threshold"] == 0.42


def test_summary_is_mean_min_max_over_seeds():
    runs = [{"val_auc": v, "pointing_game": p} for v, p in [(0.96, 0.8), (0.99, 0.9), (0.97, 1.0)]]
    s = demo.summarize(runs)
    assert s["val_auc"] == {"mean": pytest.approx(0.9733333), "min": 0.96, "max": 0.99}
    assert s["pointing_game"]["mean"] == pytest.approx(0.9) and "epochs" not in s


def test_check_says_when_a_number_is_outside_the_range_or_misses_its_target(tmp_path):
    results = documented(tmp_path / "seeds.json", [fake_run(tmp_path / "a", pointing=0.85),
                                                   fake_run(tmp_path / "b", pointing=0.9)])
    good = "\n".join(demo.check(fake_run(tmp_path / "good", pointing=0.88), results))
    assert "OUTSIDE" not in good and "MISSED" not in good and "Every number is inside" in good
    bad = demo.check(fake_run(tmp_path / "bad", pointing=0.7, marker=0.2), results)
    pointing = next(line for line in bad if "pointing game" in line)
    assert "OUTSIDE the documented range 0.850–0.900" in pointing and "target >= 0.800 MISSED" in pointing
    marker = next(line for line in bad if "side marker" in line)
    assert "MISSED" in marker
    assert "not like the documented ones" in bad[-1] and "pointing game" in bad[-1]


def test_check_without_a_documented_range_uses_the_targets(tmp_path):
    lines = demo.check(fake_run(tmp_path / "r", study_kappa=0.7), tmp_path / "missing.json")
    assert "no documented range yet" in lines[0]
    assert "MISSED" in next(line for line in lines if "test study kappa" in line)
    good = demo.check(fake_run(tmp_path / "good"), tmp_path / "missing.json")
    assert good[-1] == "Every number meets its target (no documented range to compare with yet)."


def test_tables_accumulate_per_recipe_and_come_back_from_a_log(tmp_path, monkeypatch):
    out = tmp_path / "seeds.json"
    monkeypatch.setattr(demo, "recipe", lambda: "recipe-a")
    first = [{"seed": s, "val_auc": v, "demo_seconds": 900.0} for s, v in [(1, 0.97), (2, 0.99)]]
    demo.write(demo.table(first, 0.0), out)
    log = tmp_path / "log.txt"
    log.write_text("make: noise\n" + json.dumps({"seed": 3, "val_auc": 0.95, "demo_seconds": 800.0}) + "\n")
    merged = demo.table(demo.earlier_runs(out, [3]) + demo.from_log(log), 0.0)
    assert [r["seed"] for r in merged["runs"]] == [1, 2, 3]
    assert merged["summary"]["val_auc"]["min"] == 0.95 and merged["summary"]["val_auc"]["max"] == 0.99
    assert [r["seed"] for r in demo.earlier_runs(out, [2])] == [1]  # a rerun seed replaces its old row
    monkeypatch.setattr(demo, "recipe", lambda: "recipe-b")
    assert demo.earlier_runs(out, [3]) == []  # another recipe starts a new table
    assert "| validation AUC (image) | 0.980 | 0.970 | 0.990 | ≥ 0.950 |" in out.with_suffix(".md").read_text()


def test_reread_takes_the_rescored_numbers_from_the_folders_and_keeps_the_measured_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "recipe", lambda: "recipe-a")
    out, runs = tmp_path / "seeds.json", tmp_path / "runs"
    demo.write(demo.table([{"seed": s, **demo.run_numbers(fake_run(runs / f"r{s}", pointing=0.7, n_images=60)),
                            "demo_seconds": t} for s, t in [(1, 1000.0), (2, 1200.0)]], 55.0), out)
    for s, p in [(1, 0.75), (2, 0.8125)]:  # cam --evaluate again, now on all 80 positives
        pd.DataFrame([{"method": "gradcam", "layer": "relu", "pointing_game": p, "distractor_peak": 0.0,
                       "n_images": 80}]).to_csv(runs / f"r{s}" / "cam_eval.csv", index=False)
    result = demo.reread(out, runs)
    assert [r["pointing_game"] for r in result["runs"]] == [0.75, 0.8125]
    assert [r["demo_seconds"] for r in result["runs"]] == [1000.0, 1200.0] and result["setup_seconds"] == 55.0
    assert result["summary"]["pointing_game"]["min"] == 0.75
    text = demo.markdown(result)
    assert "counts 80 positive test images" in text and "re-read from the run folders" in text


def test_the_recipe_fingerprint_covers_how_the_pointing_game_is_scored(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("seed: 1\n")
    makefile = "SYNTH_ARGS := --patients 150\ndemo:\n\t$(PY) -m fracture cam --run x --evaluate --limit 60\n"
    (tmp_path / "Makefile").write_text(makefile)
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    first = demo.recipe()
    (tmp_path / "Makefile").write_text(makefile.replace(" --limit 60", ""))
    assert demo.recipe() != first


def test_the_recipe_fingerprint_follows_the_settings_not_the_comments(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "Makefile").write_text("SYNTH_ARGS := --patients 150\n")
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    config = tmp_path / "configs" / "demo.yaml"
    config.write_text("# why: a first reason\nseed: 1\ntranslate: 0.1\n")
    first = demo.recipe()
    config.write_text("# why, said better\nseed: 1\ntranslate: 0.1  # shifts\n")
    assert demo.recipe() == first
    config.write_text("seed: 1\ntranslate: 0.05\n")
    assert demo.recipe() != first


def test_check_ignores_the_range_of_another_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "recipe", lambda: "recipe-a")
    results = tmp_path / "seeds.json"
    demo.write(demo.table([{"seed": 1, **demo.run_numbers(fake_run(tmp_path / "a", pointing=0.95)),
                            "demo_seconds": 700.0}], 0.0), results)
    assert "OUTSIDE" in "\n".join(demo.check(fake_run(tmp_path / "b", pointing=0.85), results))
    monkeypatch.setattr(demo, "recipe", lambda: "recipe-b")
    lines = demo.check(fake_run(tmp_path / "c", pointing=0.85), results)
    assert "documents another recipe" in lines[0] and "OUTSIDE" not in "\n".join(lines)


def test_readme_and_docs_tables_are_rewritten_from_the_json_between_their_markers(tmp_path, monkeypatch):
    runs = [{"seed": s, **demo.run_numbers(fake_run(tmp_path / f"r{s}", val_auc=v)), "demo_seconds": t}
            for s, v, t in [(1, 0.96, 780.0), (2, 0.99, 1020.0)]]
    result = demo.table(runs, 0.0)
    table = demo.readme_table(result)
    assert "| over 2 seeds | target | mean | min – max |" in table
    assert "| validation AUC | ≥ 0.950 | 0.975 | 0.960 – 0.990 |" in table
    assert "| `make demo` minutes | ≤ 15.0 | 15.0 | 13.0 – 17.0 |" in table
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("intro\n<!-- demo-table -->\nold\n<!-- /demo-table -->\nafter\n")
    (tmp_path / "docs" / "demo.md").write_text("<!-- seeds -->\n<!-- /seeds -->\n")
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    demo.write_docs(result)
    readme = (tmp_path / "README.md").read_text()
    assert readme == f"intro\n<!-- demo-table -->\n{table}\n<!-- /demo-table -->\nafter\n"
    assert "| seed 1 | seed 2 |" in (tmp_path / "docs" / "demo.md").read_text()


def test_the_repos_readme_and_docs_quote_the_stored_seed_table():
    """README's and docs/demo.md's demo tables are the ones `benchmarks/demo.py --docs` writes from
    benchmarks/results/demo-seeds.json: no number there that the benchmark did not produce."""
    result = json.loads(demo.RESULTS.read_text())
    readme, docs = (ROOT / "README.md").read_text(), (ROOT / "docs" / "demo.md").read_text()
    assert demo.readme_table(result) in readme
    assert demo.markdown(result).strip() in docs


def test_the_table_names_each_seeds_own_cpu_when_seeds_come_from_two_machines(monkeypatch):
    monkeypatch.setattr(demo, "cpu_model", lambda: "This CPU")
    run = lambda seed, cpu: {"seed": seed, "machine": {"cpu_model": cpu} if cpu else {}}  # noqa: E731
    assert demo.machines([run(1, "AMD EPYC"), run(2, "AMD EPYC")]) == "AMD EPYC"
    mixed = demo.machines([run(1, "Intel(R) Xeon(R) Processor"), run(2, "AMD EPYC"), run(3, "AMD EPYC")])
    assert mixed == "Intel(R) Xeon(R) Processor (seeds 1); AMD EPYC (seeds 2, 3)"
    assert demo.machines([run(4, None)]) == "This CPU"  # an older run without the record: this machine


def test_docs_without_their_table_markers_stop_with_a_message_and_nothing_written(tmp_path, monkeypatch):
    runs = [{"seed": 1, **demo.run_numbers(fake_run(tmp_path / "r1")), "demo_seconds": 700.0}]
    result = demo.table(runs, 0.0)
    (tmp_path / "docs").mkdir()
    readme = "intro\n<!-- demo-table -->\nold\n<!-- /demo-table -->\n"
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "docs" / "demo.md").write_text("a page whose table lost its markers\n")
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match="lacks the lines <!-- seeds -->"):
        demo.write_docs(result)
    assert (tmp_path / "README.md").read_text() == readme  # README, checked first, was not rewritten either
