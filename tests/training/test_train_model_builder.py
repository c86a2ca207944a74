"""Model building from flags: `timm_` prefix, class count, keyword arguments from the config and the command line."""
import logging

import pytest

from classification.engine.config import ConfigError, parse_args
from classification.engine.model_builder import build_model, check_model_flags, image_channels
from classification.models.factory import input_channels


def build(tmp_path, yaml_text, *argv):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml_text)
    cfg = parse_args(["-c", str(cfg_file), *argv])
    cfg.num_classes = 7
    return build_model(cfg)


def test_timm_prefix_and_num_classes(tmp_path):
    model = build(tmp_path, "model: timm_vit_tiny_patch16_224\nmodel_kwargs: {img_size: 16, patch_size: 4, depth: 1}\n")
    assert type(model).__name__ == "VisionTransformer" and model.head.out_features == 7
    assert len(model.blocks) == 1 and model.patch_embed.img_size == (16, 16)


def test_config_kwargs_another_model_does_not_take_are_dropped_with_a_warning(tmp_path, localmamba_log):
    with localmamba_log.at_level(logging.WARNING, logger="localmamba"):
        model = build(tmp_path, "model_kwargs: {img_size: 16, patch_size: 4}\n", "--model", "resnet10t")
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 7
    assert "does not take 'img_size'" in localmamba_log.text and "does not take 'patch_size'" in localmamba_log.text


def test_a_search_runs_candidates_are_dropped_for_the_searched_model(tmp_path, localmamba_log):
    """The args.yaml of a search over your own candidates trains the searched model (`-c args.yaml --model
    local_vim_tiny --directions FILE`): its `candidates` is dropped with a warning (the model refused it, and the
    error's hint asked for the --directions it had been given); a supernet still takes it, a flag is still refused."""
    search = "model_kwargs: {embed_dim: 16, patch_size: 4, depth: 2, candidates: [h, v_flip, w2]}\nimg_size: 16\n"
    directions = tmp_path / "directions.yaml"
    directions.write_text("directions:\n- [h, w2]\n- [v_flip, w2]\n")
    with localmamba_log.at_level(logging.WARNING, logger="localmamba"):
        model = build(tmp_path, search, "--model", "local_vim_tiny", "--directions", str(directions))
    assert model.directions == (("h", "w2"), ("v_flip", "w2")) and model.candidates is None
    assert [r.getMessage() for r in localmamba_log.records if r.levelno == logging.WARNING] == [
        "model local_vim_tiny does not take 'candidates' from the config's model_kwargs; ignored"]
    assert build(tmp_path, search, "--model", "local_vim_tiny_search").candidates == ("h", "v_flip", "w2")
    with pytest.raises(ConfigError, match=r"candidates= is the search set of a search supernet(?!.*give --directions)"):
        build(tmp_path, "{}\n", "--model", "local_vim_tiny", "--directions", str(directions), "--model-kwargs",
              "embed_dim=16", "patch_size=4", "depth=2", "candidates=[h, v]", "--img-size", "16")


def test_an_unknown_search_candidate_is_not_answered_with_a_directions_file_hint(tmp_path):
    """The hint to give --directions FILE is for a fixed model whose default table does not fit its depth; a
    supernet's unknown candidate only names the valid directions."""
    with pytest.raises(ConfigError, match=r"unknown scan direction 'zz': valid directions are h, .*"
                                          r"LOCALMAMBA_DIRECTION_MODULES\)$"):
        build(tmp_path, "{}\n", "--model", "local_vim_tiny_search", "--model-kwargs", "embed_dim=16", "patch_size=4",
              "depth=2", "candidates=[h, zz]", "--img-size", "16")
    with pytest.raises(ConfigError, match=r"the model has 2 layers; give --directions FILE"):
        build(tmp_path, "{}\n", "--model", "local_vim_tiny", "--model-kwargs", "embed_dim=16", "patch_size=4",
              "depth=2", "--img-size", "16")


def test_a_list_written_without_brackets_is_one_line(tmp_path):
    """`depths=1,1` reads as the text '1,1' and ended in a TypeError traceback deep in the model."""
    with pytest.raises(ConfigError, match=r"^model local_vssm_tiny with depths=1,1 dims=8: .*\(depths: a list is "
                                          r"written in brackets, e.g. depths=\[1,1\]\)$"):
        build(tmp_path, "{}\n", "--model", "local_vssm_tiny", "--model-kwargs", "depths=1,1", "dims=8")


def test_a_typo_in_the_model_kwargs_of_a_config_that_names_the_model_is_refused(tmp_path, localmamba_log):
    """`dpeth: 4` beside `model: local_vim_tiny_wo_search` trained depth 24 after a warning; a key with no near miss,
    or a config for another --model, is still dropped with a warning (a run's args.yaml keeps such keys)."""
    config = "model: local_vim_tiny_wo_search\nmodel_kwargs: {patch_size: 4, embed_dim: 16, dpeth: 2}\n"
    with pytest.raises(ConfigError, match=r"c.yaml: model_kwargs: model local_vim_tiny_wo_search \(the config's "
                                          r"model\) does not take 'dpeth'; did you mean depth\?"):
        build(tmp_path, config)
    with localmamba_log.at_level(logging.WARNING, logger="localmamba"):
        model = build(tmp_path, "model: resnet10t\nmodel_kwargs: {patch_size: 4}\n")
        assert type(model).__name__ == "ResNet"
        model = build(tmp_path, config, "--model", "resnet10t")
        assert type(model).__name__ == "ResNet"
    log = localmamba_log.text
    assert log.count("does not take 'patch_size'") == 2 and "does not take 'dpeth'" in log


def test_command_line_kwargs_are_never_dropped(tmp_path):
    with pytest.raises(ConfigError, match="--model-kwargs: model resnet10t does not take 'img_size'"):
        build(tmp_path, "{}\n", "--model", "resnet10t", "--model-kwargs", "img_size=16")


@pytest.mark.parametrize("model_name, grid", [("local_vim_tiny_wo_search", (2, 2)), ("vit_tiny_patch16_224", (2, 2)),
                                              ("local_vssm_tiny", None), ("resnet10t", None)])
def test_img_size_builds_the_models_made_for_one_size(tmp_path, model_name, grid):
    """--img-size reaches the models built for one input size (position tables of its token grid, as DeiT and Vim
    build them), and no other; `model_kwargs` naming `img_size` wins."""
    small = "{depth: 1}" if model_name in ("local_vim_tiny_wo_search", "vit_tiny_patch16_224") else "{}"
    model = build(tmp_path, f"model: {model_name}\nmodel_kwargs: {small}\n", "--img-size", "32")
    if grid is None:
        assert not hasattr(model, "pos_embed")
        return
    assert model.pos_embed.shape[1] == grid[0] * grid[1] + (model_name == "vit_tiny_patch16_224")
    model = build(tmp_path, f"model: {model_name}\nmodel_kwargs: {small}\n", "--img-size", "32", "--model-kwargs",
                  "img_size=64")
    assert model.pos_embed.shape[1] == 16 + (model_name == "vit_tiny_patch16_224")


@pytest.mark.parametrize("supernet, warned", [("local_vssm_tiny_search", True), ("local_vim_tiny_search", False),
                                              (None, False)])
def test_directions_searched_by_the_other_family_are_used_with_a_warning(tmp_path, localmamba_log, supernet,
                                                                         warned):
    """A LocalVMamba search's file fits a LocalVim of the same layer count and trained it without a word."""
    from classification.models.directions import save_directions
    path = tmp_path / "directions.yaml"
    save_directions(path, [["h", "v_flip"], ["w2", "w7"]], supernet=supernet, topk=2)
    argv = ["--model", "local_vim_tiny_wo_search", "--directions", str(path), "--model-kwargs", "depth=2",
            "embed_dim=32", "--img-size", "16"]
    with localmamba_log.at_level(logging.WARNING, logger="localmamba"):
        check_model_flags(parse_args(argv))    # as train() checks the flags first: no second copy of the warning
        model = build(tmp_path, "{}\n", *argv)
    assert model.layers[1].mixer.multi_scan.directions == ("w2", "w7")
    warnings = [r.getMessage() for r in localmamba_log.records if r.levelno == logging.WARNING]
    assert warnings == ([f"{path} holds the directions searched by local_vssm_tiny_search (a LocalVMamba supernet), "
                         f"but local_vim_tiny_wo_search is a LocalVim model: its layers take them as given"]
                        if warned else [])


@pytest.mark.parametrize("searched_from, expected", [
    ({"model_kwargs": {"depths": [1, 1, 2, 1]}, "finished": True}, []),
    ({"model_kwargs": {"depths": [2, 1, 1, 1]}, "finished": True},
     ["{path} was searched with stage depths (2, 1, 1, 1), local_vssm_tiny has (1, 1, 2, 1): its stages take the "
      "directions searched for other stages' blocks"]),
    ({"finished": True}, ["{path} was searched with stage depths (2, 2, 9, 2), local_vssm_tiny has (1, 1, 2, 1): "
                          "its stages take the directions searched for other stages' blocks"]),
    ({"model_kwargs": {"depths": [1, 1, 2, 1]}, "finished": False, "unfinished": "saved after epoch 3 of epochs 0-7"},
     ["{path} holds the directions of an unfinished search (saved after epoch 3 of epochs 0-7)"]),
])
def test_directions_of_another_stage_split_or_an_unfinished_search_are_used_with_a_warning(
        tmp_path, localmamba_log, searched_from, expected):
    """Five LocalVMamba layers searched as stages (2, 1, 1, 1) fit a model of stages (1, 1, 2, 1) and trained it
    without a word, each stage on another stage's directions; so did the file of a search stopped halfway, whose
    extraction printed a note."""
    from classification.models.directions import save_directions
    path = tmp_path / "directions.yaml"
    save_directions(path, [["h", "v_flip"]] * 5, supernet="local_vssm_tiny_search", topk=2,
                    searched_from=searched_from)
    argv = ["--model", "local_vssm_tiny", "--directions", str(path), "--model-kwargs", "depths=[1,1,2,1]",
            "dims=8", "--img-size", "32"]
    with localmamba_log.at_level(logging.WARNING, logger="localmamba"):
        build(tmp_path, "{}\n", *argv)
    warnings = [r.getMessage() for r in localmamba_log.records if r.levelno == logging.WARNING]
    assert warnings == [message.format(path=path) for message in expected]


def test_kwargs_a_timm_model_refuses_by_assert_are_one_line(tmp_path, monkeypatch):
    """timm's ViT asserts that its width divides by its heads: the AssertionError was a traceback (exit 1)."""
    with pytest.raises(ConfigError, match=r"^model deit_tiny_patch16_224 with img_size=16 embed_dim=64: dim should "
                                          r"be divisible by num_heads$"):
        build(tmp_path, "model: deit_tiny_patch16_224\nmodel_kwargs: {img_size: 16}\n", "--model-kwargs",
              "embed_dim=64")

    module = "def create_model(name, **kwargs):\n    assert kwargs['embed_dim'] % 3 == 0\n"
    (tmp_path / "refusing.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))  # a module pytest does not rewrite: its assert has no message
    from refusing import create_model
    monkeypatch.setattr("classification.engine.model_builder.timm.create_model", create_model)
    with pytest.raises(ConfigError, match=r"embed_dim=64: the model's constructor refused them \(assert at "
                                          r"refusing\.py:2: assert kwargs\['embed_dim'\] % 3 == 0\)$"):
        build(tmp_path, "model: deit_tiny_patch16_224\n", "--model-kwargs", "embed_dim=64")


@pytest.mark.parametrize("model, kwargs, patch", [
    ("local_vssm_tiny", ["dims=8"], 4), ("local_vim_tiny_wo_search", ["depth=2", "embed_dim=16", "patch_size=8"], 8)])
def test_an_image_size_below_one_patch_is_refused_before_training(model, kwargs, patch):
    """LocalVMamba at --img-size 2 failed in its first forward with a traceback; now the model's build refuses it in
    one line. One patch is enough."""
    with pytest.raises(ConfigError, match=rf"^--img-size {patch - 1} is smaller than one patch of {model} \({patch} "
                                          r"pixels\)$"):
        build_model(parse_args(["--model", model, "--model-kwargs", *kwargs, "--img-size", str(patch - 1)]))
    assert build_model(parse_args(["--model", model, "--model-kwargs", *kwargs, "--img-size", str(patch)])) is not None


@pytest.mark.parametrize("model, kwargs", [("local_vim_tiny_search", ["in_chans=1", "depth=2", "embed_dim=16"]),
                                           ("local_vim_tiny_search", ["channels=1", "depth=2", "embed_dim=16"]),
                                           ("local_vssm_tiny_search", ["in_chans=1", "dims=8"]),
                                           ("resnet10t", ["in_chans=1"])])
def test_a_model_of_one_input_channel_is_built_for_the_gray_images_the_data_decodes_for_it(model, kwargs):
    """The data pipeline decoded every image as RGB and the build refused `--model-kwargs in_chans=1`; now it
    decodes gray images for a 1-channel model (test_gray_channels.py), which is built."""
    cfg = parse_args(["--model", model, "--model-kwargs", *kwargs])
    assert input_channels(build_model(cfg)) == image_channels(cfg) == 1
