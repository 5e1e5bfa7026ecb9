"""The output folder's one owner: staging moved into place file by file, and the reader everyone uses."""

import json

from hftransfer import outputs
from hftransfer.outputs import OutputFolder, Staging


def test_staged_files_replace_the_old_ones_and_the_staging_folder_goes(tmp_path):
    (tmp_path / outputs.ALL_RESULTS).write_text('{"eval_accuracy": 0.5}')
    (tmp_path / outputs.REPORT_DIR).mkdir()
    (tmp_path / outputs.REPORT_DIR / "kept.md").write_text("from an earlier run")
    staging = Staging(tmp_path)
    (staging.create() / "leftover").write_text("a killed run's")
    folder = staging.create()  # a staging folder left by a killed run starts empty
    assert not (folder / "leftover").exists()
    staging.write_results("all", {"eval_accuracy": 0.75})
    (folder / outputs.REPORT_DIR).mkdir()
    (folder / outputs.REPORT_DIR / outputs.REPORT_MD).write_text("# Training report")
    staging.move_into_place()
    assert json.loads((tmp_path / outputs.ALL_RESULTS).read_text()) == {"eval_accuracy": 0.75}
    assert (tmp_path / outputs.REPORT_DIR / outputs.REPORT_MD).is_file()
    assert (tmp_path / outputs.REPORT_DIR / "kept.md").is_file()  # moved in file by file: nothing else removed
    assert not (tmp_path / outputs.STAGING).exists()


def test_the_reader_gives_none_for_what_a_run_did_not_write(tmp_path):
    output = OutputFolder(tmp_path)
    assert output.config is None and output.run is None and output.plan is None and output.comparison is None
    assert output.results == {} and output.report_file(outputs.CONFUSION_PNG) is None
    (tmp_path / outputs.CONFIG).write_text('{"model_type": "vit"}')
    (tmp_path / outputs.REPORT_DIR).mkdir()
    (tmp_path / outputs.REPORT_DIR / outputs.CURVES_PNG).write_bytes(b"png")
    assert output.config == {"model_type": "vit"}
    assert output.report_file(outputs.CURVES_PNG) == tmp_path / outputs.REPORT_DIR / outputs.CURVES_PNG
    assert outputs.stage_dir(tmp_path, "head").name == outputs.STAGE_PREFIX + "head"
