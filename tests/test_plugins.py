"""Third-party methods from a file (`--method path/to/file.py:Class`): they run, and their code and settings
are recorded in unlearn.json."""
from __future__ import annotations

import json

from mansu_audit.cli import main
from mansu_audit.io import sha256_file

from conftest import small_bundle

PLUGIN = '''
from dataclasses import dataclass

from mansu_audit.methods.base import Method, MethodSettings
from mansu_audit.methods.loop import (all_parameters, config_from_settings, data_from_settings,
                                      result_from_report, sequence_nll, train_loop)


class TinyAscent(Method):
    """Gradient ascent on the forget corpus, written outside the package."""

    name = "tiny-ascent"

    @dataclass
    class Settings(MethodSettings):
        steps: int = 2
        lr: float = 1e-4

    def run(self, context, settings):
        model = context.trainable_copy()
        data = data_from_settings(settings, context, with_retain=False)

        def objective(m, forget, retain, step):
            return {"forget": -sequence_nll(m, forget).mean()}

        report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                            trainable=all_parameters(model))
        return result_from_report(self, model, report, settings, context)
'''


def test_file_method_runs_and_records_its_code_and_settings(tmp_path, tiny_dir):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(PLUGIN)
    small_bundle(tmp_path / "bundle", n=8)
    out = tmp_path / "out"
    assert main(["unlearn", "--method", f"{plugin}:TinyAscent", "--model", str(tiny_dir), "--benchmark",
                 str(tmp_path / "bundle"), "--set", "lr=0.0002", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "unlearn.json").read_text())
    assert record["method_code"]["my_method.py"] == sha256_file(plugin)
    assert record["settings"]["lr"] == 0.0002 and record["settings"]["steps"] == 2
