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


def test_a_rerun_removes_what_the_previous_run_left_and_it_did_not_write(tmp_path):
    """A folder reused by another run holds that run's files only: an earlier LoRA run's adapter or a text model's
    tokenizer must not sit beside the new model (push would upload them); files no run wrote stay."""
    first = Staging(tmp_path)
    (first.create() / "tokenizer.json").write_text("{}")
    (first.folder / outputs.CONFIG).write_text('{"model_type": "bert"}')
    (tmp_path / outputs.ADAPTER_FOLDER).mkdir()
    (tmp_path / outputs.ADAPTER_FOLDER / "adapter_model.safetensors").write_bytes(b"lora")
    first.move_into_place((outputs.ADAPTER_FOLDER,))
    (tmp_path / "notes.txt").write_text("the user's own")
    second = Staging(tmp_path)
    (second.create() / outputs.CONFIG).write_text('{"model_type": "vit"}')
    (second.folder / "preprocessor_config.json").write_text("{}")
    second.move_into_place()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [outputs.CONFIG, "preprocessor_config.json", "notes.txt", outputs.MANIFEST])
    assert json.loads((tmp_path / outputs.CONFIG).read_text()) == {"model_type": "vit"}
    assert json.loads((tmp_path / outputs.MANIFEST).read_text()) == [outputs.CONFIG, "preprocessor_config.json"]
    (tmp_path / outputs.ADAPTER_FOLDER).mkdir()  # a LoRA run killed after its adapter, before its list
    (tmp_path / outputs.ADAPTER_FOLDER / "adapter_model.safetensors").write_bytes(b"lora")
    (tmp_path / outputs.MANIFEST).write_text("")  # and a list cut short
    third = Staging(tmp_path)
    (third.create() / outputs.CONFIG).write_text('{"model_type": "vit"}')
    third.move_into_place(owned=(outputs.ADAPTER_FOLDER,))
    assert not (tmp_path / outputs.ADAPTER_FOLDER).exists() and (tmp_path / "notes.txt").is_file()


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
