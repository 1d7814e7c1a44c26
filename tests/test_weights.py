"""Loading weights: wrong files are refused with messages that say what was expected."""
import pytest
import torch

from conftest import tiny_generator, tiny_weights
from shortcut_core import (ShortcutConfig, ShortcutError, ShortcutNetwork, ShortcutWeights, load_generator,
                           load_shortcut, save_generator, save_shortcut)


def test_shortcut_for_another_feature_size_is_refused(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_shortcut(path, ShortcutWeights(ShortcutNetwork(ShortcutConfig(feature_dim=96, num_heads=4)),
                                        generator_info={"generator": "tiny-test"}))
    with pytest.raises(ShortcutError, match="features of size 96, but generator 'tiny-test' has 64"):
        load_shortcut(path, tiny_generator())


def test_generator_file_given_as_shortcut_names_the_expected_format(tmp_path):
    path = tmp_path / "gen.safetensors"
    save_generator(path, tiny_generator())
    with pytest.raises(ShortcutError, match="not shortcut weights"):
        load_shortcut(path, tiny_generator())


def test_truncated_or_foreign_files_give_clear_errors(tmp_path):
    path = tmp_path / "short.safetensors"
    save_shortcut(path, tiny_weights())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ShortcutError, match="short.safetensors"):
        load_shortcut(path, tiny_generator())
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ShortcutError, match="expected .safetensors"):
        load_shortcut(text)
    with pytest.raises(ShortcutError, match="not found"):
        load_shortcut(tmp_path / "missing.safetensors")
    with pytest.raises(ShortcutError, match="not a generator this pack can load"):
        load_generator(str(text), device="cpu")


def test_saved_generator_reloads_identically_and_keeps_the_decoder_in_float32(tmp_path):
    generator = tiny_generator()
    path = tmp_path / "gen.safetensors"
    save_generator(path, generator)
    loaded = load_generator(str(path), device="cpu", dtype="bf16")
    assert loaded.identity == generator.identity and loaded.class_names == generator.class_names
    assert loaded.transformer.tok_emb.weight.dtype == torch.bfloat16
    assert loaded.vq.post_quant_conv.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.vq.post_quant_conv.weight, generator.vq.post_quant_conv.weight, rtol=0, atol=0)


def test_bad_device_and_dtype_names_are_refused():
    with pytest.raises(ShortcutError, match="dtype must be one of"):
        load_generator("demo", device="cpu", dtype="int8")
    with pytest.raises(ShortcutError, match="device must be"):
        load_generator("demo", device="quantum")
