"""gRPC client for a served nann-tf model (TF Serving or ``nann-tf serve``).

>>> from nann_tf.serving.client import RetrievalClient
>>> with RetrievalClient("localhost:8500", "nann") as client:   # doctest: +SKIP
...     client.wait_until_ready()
...     item_ids, scores, num_scored = client.retrieve([[12, 34, 56]])
...     similar, distances, _ = client.similar_items([34])          # items like item 34

Histories may be ragged lists: they are left-padded with 0 to the model's history length ``L``
(read from the signature metadata), so the most recent behaviour is the last column. A model
exported from string item ids (SKUs, UUIDs: its signatures take and return ``DT_STRING`` ids)
takes lists of ``str`` (padding ``""``) and returns str arrays::

    ids, scores, _ = client.retrieve([["SKU-000123", "SKU-000456"]])   # ids[0, 0]: "SKU-..."

Only
UNAVAILABLE (server starting, restarting, or a replica going away behind a load balancer) is
retried; every other error is raised at once as :class:`ServingError` with the server's gRPC
code and message.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from nann_tf.errors import UserError

__all__ = [
    "ServingError",
    "Prediction",
    "ModelVersionState",
    "RetrievalClient",
    "pad_histories",
    "PADDING_ID",
    "PADDING_KEY",
]

PADDING_ID = 0
PADDING_KEY = ""  # the padding of string item ids
_MAX_MESSAGE_BYTES = 2**31 - 1
#: The longest a client's channel waits between connection attempts to a server not yet up.
MAX_RECONNECT_BACKOFF_MS = 1000


class ServingError(UserError, RuntimeError):
    """A failed RPC.

    Attributes:
        code: the ``grpc.StatusCode``.
        details: the server's message.
    """

    def __init__(self, code: grpc.StatusCode, details: str, method: str = ""):
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {details}")
        self.code = code
        self.details = details


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A Predict response.

    Attributes:
        outputs: output alias -> array.
        model_version: the version that answered.
        signature_name: the signature that ran.
    """

    outputs: dict[str, np.ndarray]
    model_version: int
    signature_name: str


@dataclasses.dataclass(frozen=True)
class ModelVersionState:
    """One row of GetModelStatus: ``state`` is START/LOADING/AVAILABLE/UNLOADING/END."""

    version: int
    state: str
    error_code: int
    error_message: str


def _is_string_ids(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "US" or (arr.dtype == object and all(
        isinstance(v, (str, bytes)) for v in arr.reshape(-1)))


def _as_str(arr: np.ndarray) -> np.ndarray:
    """str ids (bytes decoded as UTF-8)."""
    from nann_tf.serving.tensors import decode_strings

    return decode_strings(arr) if arr.dtype.kind != "U" else arr


def pad_histories(histories, length: int | None, string: bool = False) -> np.ndarray:
    """Left-pads histories with :data:`PADDING_ID` into an int64 ``[B, length]`` array (with
    ``string``: str ids padded with :data:`PADDING_KEY`, a str array).

    The most recent behaviour is last, so padding goes on the left (right-aligned rows).

    Args:
        histories: one history (a flat sequence of ids) or a sequence of histories.
        length: the model's ``L``; ``None`` pads to the longest history.
        string: the model takes string item ids.

    Returns:
        int64 (or str) array ``[B, length]``.

    Raises:
        ValueError: a history longer than ``length``, an id of the wrong kind (not an integer,
            or with ``string`` not a str), or no history.
    """
    if isinstance(histories, np.ndarray) and histories.ndim == 2:
        rows = [list(r) for r in histories]
    else:
        seq = list(histories)
        if seq and np.ndim(seq[0]) == 0:
            seq = [seq]
        rows = [list(np.asarray(r).reshape(-1)) for r in seq]
    if not rows:
        raise ValueError("no history given")
    width = max(len(r) for r in rows) if length is None else int(length)
    out = np.full((len(rows), width), PADDING_KEY if string else PADDING_ID,
                  dtype=object if string else np.int64)
    for i, row in enumerate(rows):
        arr = np.asarray(row)
        if string:
            if arr.size and not _is_string_ids(arr):
                raise ValueError(f"history {i} holds non-string ids ({arr.dtype}): the model "
                                 "takes string item ids (str)")
        elif arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"history {i} holds non-integer ids ({arr.dtype})"
                             + (": the model takes integer item ids" if _is_string_ids(arr)
                                else ""))
        if arr.size > width:
            raise ValueError(f"history {i} has {arr.size} items; the model takes at most "
                             f"L={width} (keep the most recent {width})")
        if arr.size:
            out[i, width - arr.size:] = _as_str(arr) if string else arr.astype(np.int64)
    return out.astype(str) if string else out


def _as_batch(value, batch: int, name: str, dtype, rank: int) -> np.ndarray:
    """Broadcasts a per-request parameter to its batched shape ([B] or [B, n])."""
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integers, got {value!r}")
    elif arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got {value!r}")
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ValueError(f"{name} does not fit in {np.dtype(dtype).name}: {value!r}")
    arr = arr.astype(dtype)
    if arr.ndim == rank - 1:
        arr = np.broadcast_to(arr, (batch,) + arr.shape).copy()
    if arr.ndim != rank or arr.shape[0] != batch:
        raise ValueError(f"{name} must have shape {'[B]' if rank == 1 else '[B, n] or [n]'} "
                         f"with B={batch}, got {list(np.shape(value))}")
    return arr


def _ids_out(ids: np.ndarray) -> np.ndarray:
    """Returned item ids: int64 as they are; string ids (bytes) as str."""
    return _as_str(ids) if ids.dtype == object or ids.dtype.kind == "S" else ids


class RetrievalClient:
    """Client for one served model.

    Args:
        target: ``host:port`` of TF Serving's gRPC port (or a gRPC target such as
            ``dns:///nann-serving-headless:8500`` for client-side load balancing).
        model_name: the model name (``--model_name`` / config name).
        signature_name: default signature of :meth:`retrieve` / :meth:`predict`.
        timeout_s: deadline of every RPC.
        retries: extra attempts after UNAVAILABLE.
        backoff_s: first retry delay; doubled each retry (with jitter).
        channel: an existing channel (then ``target`` is only used in messages).
        load_balancing: gRPC load-balancing policy for the channel (``round_robin`` spreads
            requests over every address a DNS name resolves to; see serving/k8s).
    """

    def __init__(self, target: str, model_name: str, signature_name: str = "serving_default",
                 timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.1,
                 channel: grpc.Channel | None = None, load_balancing: str | None = None):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if not model_name:
            raise ValueError("model_name is empty")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0, retries and backoff_s >= 0")
        self.target = target
        self.model_name = model_name
        self.signature_name = signature_name
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                   # TF Serving (and `nann-tf serve`) open the port only once the models are
                   # loaded; gRPC's reconnect backoff would grow to 120 s meanwhile, so a client
                   # started first saw the server 20-25 s late after a 50 s load (measured).
                   ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
        if load_balancing:
            import json

            options.append(("grpc.service_config", json.dumps(
                {"loadBalancingConfig": [{load_balancing: {}}]})))
        self._owns_channel = channel is None
        self._channel = channel or grpc.insecure_channel(target, options=options)
        self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._history_length: dict[tuple[str, int | None], object] = {}  # metadata cache

    # ------------------------------------------------------------------ plumbing
    def _call(self, method, request, name: str):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(delay * (0.5 + random.random()))
                    delay *= 2
                    continue
                details = e.details() if hasattr(e, "details") else str(e)
                raise ServingError(code, details or "", f"{name} to {self.target}") from None
        raise AssertionError("unreachable")

    def _model_spec(self, spec, signature: str | None, version: int | None) -> None:
        spec.name = self.model_name
        if signature is not None:
            spec.signature_name = signature
        if version is not None:
            spec.version.value = int(version)

    # ------------------------------------------------------------------ API
    def predict(self, inputs: Mapping[str, object], signature: str | None = None,
                version: int | None = None, output_filter: Sequence[str] = ()) -> Prediction:
        """Sends one Predict request.

        Args:
            inputs: input alias -> array-like (sent with its own dtype: cast it first).
            signature: the signature (default: the client's).
            version: a specific version (default: the latest the server has).
            output_filter: output aliases to return (default: all).

        Returns:
            The :class:`Prediction`.

        Raises:
            ServingError: the server refused or failed the request.
        """
        from nann_tf.serving.tensors import from_tensor_proto
        from nann_tf.serving.warmup import make_predict_request

        request = make_predict_request(self.model_name, signature or self.signature_name,
                                       inputs, version=version)
        request.output_filter.extend(output_filter)
        response = self._call(self._predict_stub.Predict, request, "Predict")
        outputs = {alias: from_tensor_proto(t, alias) for alias, t in response.outputs.items()}
        return Prediction(outputs, int(response.model_spec.version.value),
                          response.model_spec.signature_name)

    def retrieve(self, hist_item_ids, k: int | Sequence[int] | None = None,
                 ef=None, T=None, exclude_item_ids=None, signature: str | None = None,
                 version: int | None = None, *, include_categories=None,
                 exclude_categories=None, include_tags=None, exclude_tags=None,
                 max_per_category: int | Sequence[int] | None = None, explain: bool = False,
                 full: bool = False):
        """Top-k items for a batch of users.

        Without search parameters or rules the ``serving_default`` signature runs with the
        model's defaults; giving any of them selects the ``retrieve`` signature (or
        ``retrieve_explained`` with ``explain``), where what is not given takes the export's
        default (``k``, ``ef``, ``T``: sent as 0 / -1).

        Args:
            hist_item_ids: raw item ids, one history (flat list) or a batch; ragged histories
                are left-padded with 0 (string ids: ``""``) to the model's ``L``; a 2-D int
                (or str) array is sent as is. A model with string item ids takes str ids.
            k: results per query (an int, or one per row).
            ef: beam width per level, ``"LEVEL=VALUE,..."`` or ``{level: value}``, for levels
                ``S..0`` (``S``: the served model's start level, :meth:`start_level`).
            T: rounds per level ``S-1..0``, same forms. ``ef``/``T``/``k`` are checked by
                :meth:`nann_tf.search.params.SearchParams.checked` (the rules of every
                command), so a bad setting fails here with the same message as there.
            exclude_item_ids: raw ids never to return: one flat list for every row, or one
                list per row (ragged lists are right-padded with 0, or ``""``).
            signature: override the signature choice.
            version: a specific model version.
            include_categories / exclude_categories / include_tags / exclude_tags: raw label
                ids (as in the log and the export's item table): one flat list for every row,
                or one list per row. An item is returned when it matches one of the row's
                include labels (none given: any item) and none of its exclude labels.
            max_per_category: at most this many results per category (0: no cap), one value
                or one per row.
            explain: ``retrieve_explained``: for each result, the history item the model
                attends to most ("because you viewed") and its attention weight.
            full: return every output of the signature as a dict (``search_path``,
                ``because_item_ids``, ...) instead of the tuple.

        Returns:
            ``(item_ids int64 [B, k], scores float32 [B, k], num_scored int32 [B])``;
            ``num_scored`` is ``None`` for a signature without it (``brute_force``). For a
            model with string item ids, ``item_ids`` is a str array (padding ``""``). With
            ``full``: ``{output name: array}``.

        Raises:
            SearchParamsError: bad ``ef``/``T``/``k``.
            ValueError: other malformed arguments, or ``retrieve`` without k, ef and T.
            ServingError: the server refused or failed the request.
        """
        from nann_tf.search.params import SearchParams

        rules = {"include_categories": include_categories,
                 "exclude_categories": exclude_categories, "include_tags": include_tags,
                 "exclude_tags": exclude_tags}
        params_given = any(p is not None for p in (k, ef, T, exclude_item_ids)) or \
            any(v is not None for v in rules.values()) or max_per_category is not None
        signature = signature or ("retrieve_explained" if explain else "retrieve"
                                  if params_given else self.signature_name)
        searching = signature in ("retrieve", "retrieve_explained")
        if searching and (ef is not None or T is not None):
            parsed = SearchParams().overridden(ef=ef, T=T, prefix="")  # before any RPC
        if isinstance(hist_item_ids, np.ndarray) and hist_item_ids.ndim == 2 \
                and np.issubdtype(hist_item_ids.dtype, np.integer):
            hist = hist_item_ids.astype(np.int64, copy=False)
        elif isinstance(hist_item_ids, np.ndarray) and hist_item_ids.ndim == 2 \
                and hist_item_ids.dtype.kind in "US":
            hist = _as_str(hist_item_ids)
        else:
            length = self.history_length(signature, version)
            hist = pad_histories(hist_item_ids, length,
                                 string=self.item_id_type(signature, version) == "string")
        batch = hist.shape[0]
        inputs: dict[str, np.ndarray] = {"hist_item_ids": hist}
        if searching:
            if not self._takes_rules(signature, version):
                missing = [n for n, v in (("k", k), ("ef", ef), ("T", T)) if v is None]
                if missing:  # an export from before defaults could be asked for
                    raise ValueError(f"the served model's {signature} signature needs k, ef "
                                     f"and T; missing {', '.join(missing)}")
            ks = _as_batch(0 if k is None else k, batch, "k", np.int32, 1)
            if ef is not None or T is not None:
                if ef is None or T is None:
                    raise ValueError("ef and T go together (the levels S..0 of the served "
                                     "model); give both, or neither for the export's defaults")
                params = parsed.replace(start_level=self.start_level(version),
                                        k=max(int(ks.max()) if ks.size else 1, 1)).checked()
                inputs["ef"] = _as_batch(params.ef_row(), batch, "ef", np.int32, 2)
                inputs["T"] = _as_batch(params.T_row(), batch, "T", np.int32, 2)
            else:  # the export's defaults: ef 0 and T -1 on every level
                levels = self.start_level(version) + 1
                inputs["ef"] = np.zeros([batch, levels], np.int32)
                inputs["T"] = np.full([batch, levels], -1, np.int32)
            inputs["k"] = ks
            inputs["exclude_item_ids"] = self._exclusions(exclude_item_ids, batch,
                                                          string=hist.dtype.kind == "U")
            inputs.update(self._rules(rules, max_per_category, batch, signature, version))
        elif params_given:
            raise ValueError(f"k/ef/T/exclude_item_ids and filters need the retrieve "
                             f"signature, not {signature!r}")
        out = dict(self.predict(inputs, signature=signature, version=version).outputs)
        out["item_ids"] = _ids_out(out["item_ids"])
        if "because_item_ids" in out:
            out["because_item_ids"] = _ids_out(out["because_item_ids"])
        if full:
            return out
        return out["item_ids"], out["scores"], out.get("num_scored")

    def _takes_rules(self, signature: str, version: int | None) -> bool:
        """Whether the served signature has the filter inputs (exports since filters exist)."""
        sig = self._signature_defs(version).get(signature)
        return sig is not None and "include_categories" in sig.inputs

    def _rules(self, rules: dict, max_per_category, batch: int, signature: str,
               version: int | None) -> dict:
        """The filter and cap inputs (only for a signature that has them: a model exported
        before filters existed takes none, and a request with rules is refused naming them)."""
        given = [n for n, v in rules.items() if v is not None] + \
            (["max_per_category"] if max_per_category is not None else [])
        if not self._takes_rules(signature, version):
            if given:
                raise ValueError(f"{', '.join(given)}: the served model's {signature!r} "
                                 "signature takes no filters (exported before they existed; "
                                 "export it again)")
            return {}
        out = {}
        for name, value in rules.items():
            if value is None:
                out[name] = np.zeros([batch, 1], np.int64)
                continue
            seq = value.tolist() if isinstance(value, np.ndarray) else list(value)
            rows = [seq] * batch if not seq or np.ndim(seq[0]) == 0 else seq
            out[name] = self._id_rows(rows, batch, name)
            if out[name].shape[1] == 0:
                out[name] = np.zeros([batch, 1], np.int64)
        out["max_per_category"] = _as_batch(0 if max_per_category is None else max_per_category,
                                            batch, "max_per_category", np.int32, 1)
        return out

    def similar_items(self, item_ids, k: int | Sequence[int] | None = None,
                      exclude_item_ids=None, include_seeds: bool | Sequence[bool] = False,
                      mode: str = "embedding", version: int | None = None, *,
                      include_categories=None, exclude_categories=None, include_tags=None,
                      exclude_tags=None, max_per_category=None, full: bool = False):
        """Items similar to seed items (items-to-item).

        Args:
            item_ids: raw ids of the seed items: one row (a flat list, e.g. ``[34]`` or
                ``[34, 56]``; string ids: ``["SKU-000123"]``) or a batch of rows (ragged rows
                are right-padded with 0, or ``""``). In the ``model`` mode a row is read as a
                history, oldest first.
            k: results per row (an int, or one per row); ``None`` takes the export's default.
            exclude_item_ids: raw ids never to return (one flat list for every row, or one
                list per row).
            include_seeds: also return the seed items themselves (one flag, or one per row).
            mode: ``"embedding"`` (the nearest items in the item network's space:
                ``similar_items``, scores are ``-squared distance``) or ``"model"`` (the NANN
                model's score with the seeds as the history: ``similar_items_model``).
            version: a specific model version.
            include_categories / exclude_categories / include_tags / exclude_tags /
                max_per_category / full: as :meth:`retrieve`.

        Returns:
            ``(item_ids int64 [B, k], scores float32 [B, k], num_scored int32 [B])``; rows
            with fewer results (or no known seed) are padded with id 0 and score ``-inf``.
            String item ids (seeds given as str) come back as a str array (padding ``""``).

        Raises:
            ValueError: malformed arguments or an unknown mode.
            ServingError: the server refused or failed the request.
        """
        signatures = {"embedding": "similar_items", "model": "similar_items_model"}
        if mode not in signatures:
            raise ValueError(f"mode must be embedding or model, got {mode!r}")
        seq = item_ids.tolist() if isinstance(item_ids, np.ndarray) else list(item_ids)
        if not seq:
            raise ValueError("item_ids: no seed items given")
        if np.ndim(seq[0]) == 0:
            seq = [seq]
        # String seeds mean a model with string item ids (the server checks the dtype).
        string = any(_is_string_ids(np.asarray(r).reshape(-1)) and np.size(r) for r in seq)
        seeds = self._id_rows(seq, len(seq), "item_ids", string)
        batch = seeds.shape[0]
        if seeds.shape[1] == 0:
            raise ValueError("item_ids: every row is empty (expected at least one seed id)")
        inputs = {
            "item_ids": seeds,
            "k": _as_batch(0 if k is None else k, batch, "k", np.int32, 1),
            "exclude_item_ids": self._exclusions(exclude_item_ids, batch, string),
            "include_seeds": np.broadcast_to(np.asarray(include_seeds, bool), (batch,)).copy(),
        }
        rules = {"include_categories": include_categories,
                 "exclude_categories": exclude_categories, "include_tags": include_tags,
                 "exclude_tags": exclude_tags}
        inputs.update(self._rules(rules, max_per_category, batch, signatures[mode], version))
        out = dict(self.predict(inputs, signature=signatures[mode], version=version).outputs)
        out["item_ids"] = _ids_out(out["item_ids"])
        if full:
            return out
        return out["item_ids"], out["scores"], out["num_scored"]

    @staticmethod
    def _id_rows(rows, batch: int, name: str, string: bool = False) -> np.ndarray:
        """Rows of raw ids, right-padded with 0 into int64 ``[batch, width]`` (``string``:
        str ids padded with ``""``)."""
        if len(rows) != batch:
            raise ValueError(f"{name} has {len(rows)} rows for a batch of {batch}")
        width = max((np.size(r) for r in rows), default=0)
        out = np.full((batch, width), PADDING_KEY if string else PADDING_ID,
                      object if string else np.int64)
        for i, r in enumerate(rows):
            arr = np.asarray(r).reshape(-1)
            if string:
                if arr.size and not _is_string_ids(arr):
                    raise ValueError(f"{name} row {i} holds non-string ids: the item ids are "
                                     "strings here")
                if arr.size:
                    out[i, :arr.size] = _as_str(arr)
                continue
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} row {i} holds non-integer ids")
            out[i, :arr.size] = arr
        return out.astype(str) if string else out

    @staticmethod
    def _exclusions(exclude_item_ids, batch: int, string: bool = False) -> np.ndarray:
        if exclude_item_ids is None:
            return np.zeros((batch, 0), "<U1" if string else np.int64)
        if isinstance(exclude_item_ids, np.ndarray) and exclude_item_ids.ndim == 2:
            rows = list(exclude_item_ids)
        else:
            seq = list(exclude_item_ids)
            if not seq or np.ndim(seq[0]) == 0:
                rows = [seq] * batch
            else:
                rows = seq
        return RetrievalClient._id_rows(rows, batch, "exclude_item_ids", string)

    def metadata(self, version: int | None = None):
        """GetModelMetadata: the model's signatures.

        Returns:
            ``(version, {signature name: SignatureDef proto})``.
        """
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec, None, version)
        request.metadata_field.append("signature_def")
        response = self._call(self._predict_stub.GetModelMetadata, request, "GetModelMetadata")
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return int(response.model_spec.version.value), dict(sig_map.signature_def)

    def _signature_defs(self, version: int | None = None) -> dict:
        """The signatures of :meth:`metadata`, fetched once per version (cached like what is
        read from them)."""
        key = ("signature_defs", version)
        if key not in self._history_length:
            self._history_length[key] = self.metadata(version)[1]
        return self._history_length[key]

    def _signature(self, signature: str, version: int | None):
        """The served SignatureDef of ``signature``.

        Raises:
            ValueError: the model has no such signature (naming the ones it has).
        """
        sigs = self._signature_defs(version)
        if signature not in sigs:
            raise ValueError(f"model {self.model_name} has no signature {signature!r}; "
                             f"it has {sorted(s for s in sigs if not s.startswith('__'))}")
        return sigs[signature]

    def history_length(self, signature: str | None = None,
                       version: int | None = None) -> int | None:
        """The model's ``L``: dimension 1 of ``hist_item_ids`` in the signature (cached).

        Returns:
            ``L``, or ``None`` when the signature leaves it dynamic.

        Raises:
            ServingError: metadata unavailable; ValueError: no such signature or input.
        """
        signature = signature or self.signature_name
        key = (signature, version)
        if key not in self._history_length:
            inputs = self._signature(signature, version).inputs
            if "hist_item_ids" not in inputs:
                raise ValueError(f"signature {signature!r} has no hist_item_ids input")
            dims = inputs["hist_item_ids"].tensor_shape.dim
            self._history_length[key] = (int(dims[1].size) if len(dims) == 2
                                         and dims[1].size > 0 else None)
        return self._history_length[key]

    def item_id_type(self, signature: str | None = None, version: int | None = None) -> str:
        """``"string"`` when the signature's item-id input (``hist_item_ids``, or ``item_ids``
        of the similar-items signatures) is ``DT_STRING`` (a model exported from string item
        ids), else ``"int"`` (cached).

        Raises:
            ServingError: metadata unavailable; ValueError: no such signature or input.
        """
        from tensorflow.core.framework import types_pb2

        signature = signature or self.signature_name
        key = (f"{signature}:item_id_type", version)
        if key not in self._history_length:
            inputs = self._signature(signature, version).inputs
            name = next((n for n in ("hist_item_ids", "item_ids") if n in inputs), None)
            if name is None:
                raise ValueError(f"signature {signature!r} takes no item ids")
            self._history_length[key] = ("string" if inputs[name].dtype == types_pb2.DT_STRING
                                         else "int")
        return self._history_length[key]

    def start_level(self, version: int | None = None) -> int:
        """The served beam search's start level ``S``: the ``retrieve`` signature's ``ef`` input
        is ``[B, S + 1]`` (cached).

        Raises:
            ServingError: metadata unavailable; ValueError: the model has no ``retrieve``
            signature with a static ``ef`` width.
        """
        key = ("retrieve:start_level", version)
        if key not in self._history_length:
            sigs = self._signature_defs(version)
            sig = sigs.get("retrieve")
            dims = sig.inputs["ef"].tensor_shape.dim if sig and "ef" in sig.inputs else []
            if len(dims) != 2 or dims[1].size < 1:
                raise ValueError(f"model {self.model_name} has no retrieve signature with an "
                                 "ef input [B, S+1]: it takes no search parameters")
            self._history_length[key] = int(dims[1].size) - 1
        return self._history_length[key]

    def status(self, version: int | None = None) -> list[ModelVersionState]:
        """GetModelStatus: every version the server knows, with its state and error."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, None, version)
        response = self._call(self._model_stub.GetModelStatus, request, "GetModelStatus")
        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return [ModelVersionState(int(s.version), names(s.state), int(s.status.error_code),
                                  s.status.error_message)
                for s in response.model_version_status]

    def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> int:
        """Blocks until some version of the model is AVAILABLE.

        Returns:
            The newest available version.

        Raises:
            TimeoutError: not ready in time (the message has the last status or error).
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            try:
                available = [s.version for s in self.status() if s.state == "AVAILABLE"]
                if available:
                    return max(available)
                last = "no version AVAILABLE yet"
            except ServingError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"model {self.model_name} at {self.target} not ready after "
                                   f"{timeout_s:.0f} s: {last}")
            time.sleep(poll_s)

    def close(self) -> None:
        """Closes the channel (if this client created it)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "RetrievalClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
