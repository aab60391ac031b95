"""Request and response models of the HTTP API (pydantic v2).

Requests are parsed with ``model_validate_json`` straight from the body bytes (one pass in
Rust, no intermediate dict) in strict mode, so the OpenAPI schema says exactly what is
accepted: ``true`` is not a number and ``"1"`` is not an integer. Responses on the hot path
are serialised with orjson from plain dicts and NumPy arrays (see ``app.py``); the response
models here document them in the OpenAPI schema, which the schemathesis test checks the
real responses against.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# keep_alive: a duration string ("5m", "1h30m", "-1", "never") or a number of seconds.
KeepAliveField = float | str | None

_TOKEN_IDS_MESSAGE = (
    "input as token ids is not supported: ids from another tokenizer (e.g. OpenAI's "
    "tiktoken) mean nothing to this model. Send the text instead (LangChain: "
    "OpenAIEmbeddings(check_embedding_ctx_length=False))"
)


def _reject_token_ids(value: object) -> object:
    """Give token-id input (list of ints or of int lists) a clear message, not a type error."""
    if isinstance(value, list) and value:
        first = value[0]
        if (isinstance(first, int) and not isinstance(first, bool)) or (
            isinstance(first, list) and first and isinstance(first[0], int)
        ):
            raise ValueError(_TOKEN_IDS_MESSAGE)
    return value


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class OpenAIEmbeddingRequest(_Request):
    """OpenAI ``POST /v1/embeddings``. ``keep_alive`` is a lazyembed extension."""

    input: str | list[str] = Field(description="A text or a list of texts.")
    model: str | None = Field(
        default=None, description="Model name or alias; omitted means the default model."
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        default="float",
        description="base64: little-endian float32 bytes, as OpenAI sends; null: float.",
    )
    dimensions: int | None = Field(
        default=None, description="Must be the model's own (384 for all-MiniLM-L6-v2)."
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")
    keep_alive: KeepAliveField = Field(
        default=None, description="lazyembed extension: how long to keep the model loaded."
    )

    _no_token_ids = field_validator("input", mode="before")(_reject_token_ids)


class OllamaEmbedRequest(_Request):
    """Ollama ``POST /api/embed``. Empty input loads the model (or unloads with keep_alive 0)."""

    model: str | None = None
    input: str | list[str] | None = None
    truncate: bool = True
    keep_alive: KeepAliveField = None
    options: dict[str, Any] | None = Field(default=None, description="Accepted and ignored.")
    dimensions: int | None = None

    _no_token_ids = field_validator("input", mode="before")(_reject_token_ids)


class OllamaEmbeddingsRequest(_Request):
    """Ollama's legacy ``POST /api/embeddings`` (one prompt, one vector)."""

    model: str | None = None
    prompt: str | None = None
    keep_alive: KeepAliveField = None
    options: dict[str, Any] | None = Field(default=None, description="Accepted and ignored.")

    @model_validator(mode="before")
    @classmethod
    def _input_is_not_prompt(cls, data: Any) -> Any:
        """``input`` (the field of /api/embed) without ``prompt`` is a mistake, not the
        empty prompt that loads the model: say so, instead of answering no vector."""
        if isinstance(data, dict) and "input" in data and "prompt" not in data:
            raise ValueError(
                "/api/embeddings takes the text as 'prompt' (one string); 'input' is the "
                "field of /api/embed"
            )
        return data


class UnloadRequest(_Request):
    """lazyembed's ``POST /api/unload``: one model, or (no body, no model) every model."""

    model: str | None = None


# ---- responses (documentation and schema checks) ----------------------------------------


class EmbeddingData(BaseModel):
    object: Literal["embedding"]
    embedding: list[float] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingData]
    model: str
    usage: Usage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModel]


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int = Field(description="Nanoseconds.")
    load_duration: int = Field(description="Nanoseconds spent loading the model.")
    prompt_eval_count: int


class OllamaEmbeddingsResponse(BaseModel):
    embedding: list[float]


class ModelDetails(BaseModel):
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class PsModel(BaseModel):
    name: str
    model: str
    size: int = Field(description="Measured bytes the loaded model adds to the process.")
    digest: str
    details: ModelDetails
    expires_at: str | None = Field(description="RFC 3339; null while pinned or in use.")
    size_vram: int
    context_length: int


class PsResponse(BaseModel):
    models: list[PsModel]
    lazyembed: dict[str, Any] = Field(description="The default model's measured memory report.")
    lazyembed_models: dict[str, dict[str, Any]] = Field(
        description="Every served model's measured memory report (loaded or not), by name."
    )


class TagModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int = Field(description="Bytes of the converted ONNX file.")
    digest: str
    details: ModelDetails


class TagsResponse(BaseModel):
    models: list[TagModel]


class UnloadResponse(BaseModel):
    unloaded: bool
    memory: dict[str, Any]


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model_loaded: bool


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


class OllamaError(BaseModel):
    error: str
