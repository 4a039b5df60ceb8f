"""Which vendor a model belongs to, for /api/rankings: a table of model-name prefixes.

new-api takes a model's vendor from its pricing settings (or the channel's `OwnedBy`);
usage-stats reads only `logs`, so the vendor comes from this table instead, which the
operator can extend or override with a JSON file (RANKINGS_VENDORS, read by
shared.config): {"model name or prefix": "Vendor"}.

Matching, case-insensitive:
1. the operator's entries first, then the default table: an operator entry that matches
   wins over every default entry, so a short operator prefix can re-map a whole family;
2. within one table, the longest matching key wins (an exact model name is the longest
   prefix of itself), so "gpt-4o-mini-custom" can be told apart from "gpt-";
3. a name with a routing prefix ("openai/gpt-4o", "deepseek-ai/DeepSeek-V3") is tried
   whole first, then by the part after its last "/";
4. no match: "Unknown", as new-api says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache

UNKNOWN_VENDOR = "Unknown"

# The default table. Keys are prefixes of model names, lower case.
DEFAULT_VENDORS: Mapping[str, str] = {
    # OpenAI
    "gpt-": "OpenAI",
    "chatgpt-": "OpenAI",
    "o1": "OpenAI",
    "o3": "OpenAI",
    "o4": "OpenAI",
    "codex-": "OpenAI",
    "text-embedding-": "OpenAI",
    "text-moderation-": "OpenAI",
    "omni-moderation-": "OpenAI",
    "davinci": "OpenAI",
    "babbage": "OpenAI",
    "dall-e": "OpenAI",
    "whisper": "OpenAI",
    "tts-": "OpenAI",
    "sora": "OpenAI",
    # Anthropic
    "claude": "Anthropic",
    # Google
    "gemini": "Google",
    "gemma": "Google",
    "imagen": "Google",
    "veo": "Google",
    # Chinese model vendors
    "deepseek": "DeepSeek",
    "qwen": "Alibaba",
    "qwq": "Alibaba",
    "qvq": "Alibaba",
    "glm": "Zhipu AI",
    "chatglm": "Zhipu AI",
    "cogview": "Zhipu AI",
    "cogvideo": "Zhipu AI",
    "moonshot": "Moonshot AI",
    "kimi": "Moonshot AI",
    "doubao": "ByteDance",
    "ernie": "Baidu",
    "hunyuan": "Tencent",
    "abab": "MiniMax",
    "minimax": "MiniMax",
    "yi-": "01.AI",
    "step-": "StepFun",
    "baichuan": "Baichuan",
    "sparkdesk": "iFlytek",
    "internlm": "Shanghai AI Lab",
    "kling": "Kuaishou",
    # Others
    "mistral": "Mistral AI",
    "open-mistral": "Mistral AI",
    "mixtral": "Mistral AI",
    "codestral": "Mistral AI",
    "ministral": "Mistral AI",
    "pixtral": "Mistral AI",
    "magistral": "Mistral AI",
    "devstral": "Mistral AI",
    "llama": "Meta",
    "meta-llama": "Meta",
    "grok": "xAI",
    "command": "Cohere",
    "embed-english": "Cohere",
    "embed-multilingual": "Cohere",
    "rerank-": "Cohere",
    "jina": "Jina AI",
    "phi-": "Microsoft",
    "nova-": "Amazon",
    "amazon.": "Amazon",
    "titan": "Amazon",
    "nemotron": "NVIDIA",
    "sonar": "Perplexity",
    "flux": "Black Forest Labs",
    "midjourney": "Midjourney",
    "mj_": "Midjourney",
    "suno": "Suno",
}


class VendorTable:
    """The default table with the operator's `overrides` on top (see the module's doc)."""

    def __init__(self, overrides: Iterable[tuple[str, str]] = ()):
        # Longest key first, so the first match is the longest.
        self._tables = tuple(
            tuple(sorted(((k.lower(), v) for k, v in table), key=lambda kv: -len(kv[0])))
            for table in (tuple(overrides), tuple(DEFAULT_VENDORS.items()))
        )

    def _match(self, name: str) -> str | None:
        for table in self._tables:
            for key, vendor in table:
                if name.startswith(key):
                    return vendor
        return None

    def vendor(self, model_name: str) -> str:
        name = model_name.lower()
        found = self._match(name)
        if found is None and "/" in name:
            found = self._match(name.rsplit("/", 1)[1])
        return UNKNOWN_VENDOR if found is None else found


@lru_cache(maxsize=8)
def vendor_table(overrides: tuple[tuple[str, str], ...] = ()) -> VendorTable:
    """The table for these overrides (Settings.rankings_vendors), built once."""
    return VendorTable(overrides)
