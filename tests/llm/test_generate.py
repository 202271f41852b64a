"""edgekit.runtime.generate on a tiny random Llama exported with its KV cache: both engines, real ONNX Runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from gen_artifact import tiny_pair  # noqa: E402

from edgekit.errors import InputError  # noqa: E402

PROMPT = "what is the capital of france"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return tiny_pair(tmp_path_factory)[1]


@pytest.fixture(scope="module", params=["ort", "genai"])
def gen(request, artifact):
    from edgekit.runtime.generate import load_generator

    return load_generator(artifact, engine=request.param, threads=1)


def test_streaming_equals_text(gen):
    text = gen.generate(PROMPT, max_new_tokens=12)
    pieces = list(gen.generate(PROMPT, max_new_tokens=12, stream=True))
    assert len(text.split()) >= 6
    assert len(pieces) > 1 and "".join(pieces) == text


def test_engines_agree_on_greedy_tokens(artifact):
    from edgekit.runtime.generate import load_generator

    ort, genai = (load_generator(artifact, engine=e) for e in ("ort", "genai"))
    for prompt in (PROMPT, [{"role": "user", "content": "how good is this movie"}]):
        ids = ort.encode(prompt)
        assert ort.generate_ids(ids, 16) == genai.generate_ids(ids, 16)


def test_stop_string_cuts_text(gen):
    full = gen.generate(PROMPT, max_new_tokens=12)
    words = full.split()
    stop = " " + words[3]
    expected = full[: full.find(stop)]
    assert gen.generate(PROMPT, max_new_tokens=12, stop=[stop, "zzz-not-there"]) == expected
    assert "".join(gen.generate(PROMPT, max_new_tokens=12, stop=stop, stream=True)) == expected
    assert gen.generate(PROMPT, max_new_tokens=12, stop="") == full  # an empty stop stops nothing ("" was returned)


def test_seed_makes_sampling_reproducible(gen):
    runs = [gen.generate(PROMPT, max_new_tokens=10, temperature=1.5, top_k=20, top_p=0.95, seed=s)
            for s in (7, 7, 8, 9, 10)]
    assert runs[0] == runs[1]
    assert len(set(runs)) > 1  # other seeds give other samples


def test_chat_template_and_batches(gen):
    messages = [{"role": "user", "content": PROMPT}]
    rendered = gen.template.render(messages)
    assert rendered == f"<|im_start|>user {PROMPT}<|im_end|><|im_start|>assistant "
    assert gen.encode(messages) == gen.encode(PROMPT, chat=True) == gen.encode(rendered)
    batch = gen.generate([PROMPT, messages], max_new_tokens=6)
    assert batch == [gen.generate(PROMPT, max_new_tokens=6), gen.generate(messages, max_new_tokens=6)]


def test_one_line_errors(gen):
    for bad, needle in (("", "Empty prompt"), ("   ", "Empty prompt"), ("the " * 80, "Prompt too long")):
        with pytest.raises(InputError) as err:
            gen.generate(bad, max_new_tokens=4)
        assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="max_new_tokens"):
        gen.generate(PROMPT, max_new_tokens=0)


@pytest.mark.parametrize("kwargs,needle", [({"max_new_tokens": "4"}, "max_new_tokens must be a whole number"),
                                           ({"max_new_tokens": None}, "max_new_tokens must be a whole number"),
                                           ({"temperature": None}, "temperature must be a number"),
                                           ({"top_p": float("nan")}, "top_p must be a number"),
                                           ({"seed": "abc"}, "seed must be a whole number or None"),
                                           ({"stop": [None, 5]}, "stop must be a string or a list of strings")])
def test_argument_types_are_one_line_errors(artifact, kwargs, needle):
    """Each raised a bare ValueError / TypeError from int(), float(), numpy's seeding or str.find."""
    from edgekit.runtime.generate import load_generator

    with pytest.raises(InputError, match=needle):
        load_generator(artifact, engine="ort", threads=1).generate(PROMPT, **{"max_new_tokens": 4, **kwargs})


@pytest.mark.parametrize("file,edit,needle", [
    ("tokenizer.json", lambda text: "{}", "tokenizer.json in .* cannot be loaded"),
    ("manifest.json", lambda text: json.dumps({**json.loads(text), "llm": {"eos_token_ids": "abc"}}),
     "has malformed model facts"),
])
def test_a_damaged_artifact_is_a_model_error(artifact, tmp_path, file, edit, needle):
    from edgekit.errors import ModelError
    from edgekit.runtime import load

    broken = shutil.copytree(artifact, tmp_path / "broken")
    (broken / file).write_text(edit((broken / file).read_text()))
    with pytest.raises(ModelError, match=needle):
        load(broken)


def test_a_causal_lm_without_its_manifest_is_not_taken_for_a_classifier(artifact, tmp_path):
    from edgekit.errors import ModelError
    from edgekit.runtime import load

    bare = shutil.copytree(artifact, tmp_path / "bare")
    for name in ("manifest.json", "genai_config.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ModelError, match="holds a causal LM .* but no manifest.json or genai_config.json"):
        load(bare)


def test_a_plain_prompt_gets_the_tokenizers_special_tokens_as_in_transformers(artifact, tmp_path):
    """A tokenizer that adds <s> (Llama's): the runtime encoded a plain prompt without it, so it answered another
    input than transformers and the export's validation had; a templated prompt keeps the template's own tokens."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer

    from edgekit.runtime.generate import load_generator

    folder = shutil.copytree(artifact, tmp_path / "bos")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok.save(str(folder / "tokenizer.json"))
    expected = AutoTokenizer.from_pretrained(str(folder))(PROMPT)["input_ids"]
    gen = load_generator(folder, engine="ort", threads=1)
    assert expected[0] == bos and gen.encode(PROMPT) == expected
    messages = [{"role": "user", "content": PROMPT}]
    assert gen.encode(messages) == tok.encode(gen.template.render(messages), add_special_tokens=False).ids


def test_genai_on_a_dynamo_export_is_a_model_error(artifact, tmp_path):
    """onnxruntime-genai does not drive the dynamo route's graph: engine='genai' on one was a RuntimeError at the
    first prompt ("Model input was not found"), and the example server dropped every request."""
    from edgekit.errors import ModelError
    from edgekit.runtime.generate import load_generator

    folder = shutil.copytree(artifact, tmp_path / "dynamo")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "route": "dynamo"}))
    with pytest.raises(ModelError, match="exported by the dynamo route"):
        load_generator(folder, engine="genai")
    assert load_generator(folder).engine_name == "ort"


def test_chat_template_is_rendered_as_transformers_renders_it(artifact, tmp_path):
    """chat_template.jinja wins over tokenizer_config.json's copy (as in transformers), loop controls and
    strftime_now work, and a template that cannot render is a one-line ModelError (the server dropped the request)."""
    from transformers import AutoTokenizer

    from edgekit.errors import ModelError
    from edgekit.runtime.generate import ChatTemplate

    folder = shutil.copytree(artifact, tmp_path / "jinja")
    messages = [{"role": "user", "content": "the film"}, {"role": "user", "content": "the plot"}]
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}JINJA {{ m['content'] }}{% break %}{% endfor %} {{ strftime_now('%Y') }}")
    expected = AutoTokenizer.from_pretrained(str(folder)).apply_chat_template(messages, tokenize=False,
                                                                             add_generation_prompt=True)
    assert ChatTemplate(folder).render(messages) == expected and expected.startswith("JINJA the film ")
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] | no_such_filter }}")
    with pytest.raises(ModelError, match="chat template cannot be rendered"):
        ChatTemplate(folder).render(messages)


@pytest.mark.parametrize("kwargs", [{"backend": "bogus"}, {"backend": "tensorrt-rtx"}, {"device": 3},
                                    {"batch_size": 0}, {"max_length": 4}, {"max_batch": 1}, {"threads": -1},
                                    {"threads": 2.5}, {"threads": "2"}, {"threads": True}])
def test_load_of_a_causal_lm_refuses_what_it_would_ignore(artifact, kwargs):
    """Each was accepted and ignored by load() on a causal-LM folder (the genai engine ran on the CPU)."""
    from edgekit.runtime import load

    with pytest.raises(InputError):
        load(artifact, **kwargs)
    assert load(artifact, threads=1).engine_name in ("ort", "genai")


def test_stops_at_context_end(gen):
    ids = gen.encode("the " * 55)
    assert len(gen.generate_ids(ids, 50)) <= gen.info.context_length - len(ids)


def test_runtime_does_not_import_torch(artifact):
    code = ("import sys; from edgekit.runtime.generate import load_generator; "
            f"g = load_generator({str(artifact)!r}, engine='ort'); g.generate('the film', max_new_tokens=3); "
            "g = load_generator(%r, engine='genai'); g.generate('the film', max_new_tokens=3); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'") % str(artifact)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2], check=False)
    assert done.returncode == 0, done.stderr[-1500:]


class _Replay:
    """An engine that replays fixed token ids (the tokenizer and text handling are what is under test)."""

    name = "replay"

    def __init__(self, ids):
        self.ids = ids

    def tokens(self, ids, limit, opts):
        yield from self.ids[:limit]


def test_stream_decodes_multibyte_characters_whole(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from edgekit.runtime.generate import LMInfo, TextGenerator

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = "été 🌊 ok"
    ids = tok.encode(text).ids
    assert len(ids) == len(text.encode())  # one token per byte: é and 🌊 span several tokens
    gen = TextGenerator(tmp_path, _Replay(ids + [999]), LMInfo(1, 1, 1, [999], 4096), tok)
    pieces = list(gen.generate("hi", max_new_tokens=64, stream=True))
    assert "".join(pieces) == text == gen.generate("hi", max_new_tokens=64)
    assert not any("\ufffd" in p for p in pieces)
    assert gen.generate("hi", max_new_tokens=64, stop="🌊") == "été "
