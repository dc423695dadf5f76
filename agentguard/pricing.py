"""Per-model prices, dated and overridable: cost after fallback is only as good as this table.

Prices are USD per million tokens, matched by the longest model-name prefix, so
`claude-opus-4-7` and `claude-opus-4-7-20261001` both use the `claude-opus-4` entry. They are
list prices as we last knew them on PRICES_AS_OF; check them against your provider's price page
and override them in `$AGENTGUARD_HOME/prices.toml` (or `compute(prices=...)`) — a gateway may
charge otherwise:

    ["claude-opus-4"]                 # a model name or prefix
    input = 5.0                       # USD per million input tokens
    output = 25.0

"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

PRICES_AS_OF = "2026-11-01"
PRICES_FILE = "prices.toml"


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="USD per million input tokens")
    output: float = Field(ge=0, description="USD per million output tokens")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4": Price(input=5.0, output=25.0),
    "claude-sonnet-4": Price(input=3.0, output=15.0),
    "claude-haiku-4": Price(input=1.0, output=5.0),
    "gpt-5": Price(input=1.25, output=10.0),
    "deepseek-v4": Price(input=0.28, output=0.42),
    "deepseek/deepseek-v4": Price(input=0.28, output=0.42),
    "kimi-k2": Price(input=0.60, output=2.50),
    "gemini-2.5-pro": Price(input=1.25, output=10.0),
}


def price_for(model: str | None, overrides: Mapping[str, Price] | None = None) -> Price | None:
    """The price of a model: an exact or longest-prefix match, overrides first."""
    if not model:
        return None
    for table in (overrides or {}, DEFAULT_PRICES):
        if model in table:
            return table[model]
        matches = [prefix for prefix in table if model.startswith(prefix)]
        if matches:
            return table[max(matches, key=len)]
    return None


def load_prices(home: Path) -> dict[str, Price]:
    """Your overrides from `home/prices.toml` (none if the file is absent)."""
    from agentguard.errors import ConfigError
    from agentguard.policy import validate_model

    path = home / PRICES_FILE
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the file.") from None
    return {
        model: validate_model(Price, table, f"price of {model!r} in {path}")
        for model, table in data.items()
    }
