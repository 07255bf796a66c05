"""The engines' figures as Prometheus metrics, read from shared memory at scrape time.

The engines already count what they do in shared memory (``gpu_pool.EngineStats``),
and every web worker sees the same counters. So no engine writes metrics: the
worker that answers ``/metrics`` reads the counters when Prometheus asks, which
gives the same answer whichever worker that is.

Batch sizes are exposed as summaries without quantiles (``_count`` = batches,
``_sum`` = requests or texts in them): the engine keeps totals, not a
distribution, and ``rate(x_sum) / rate(x_count)`` is the mean batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from embsvc.core.backend import Backend
from gpu_pool import EngineState, Lane

LABELS = ("engine", "device")
STATES = [state.name.lower() for state in EngineState]


class EngineCollector(Collector):
    def __init__(self, backend: Backend, models: Sequence[tuple[str, bool]] = ()) -> None:
        """``models``: each served model's name, and whether it is the cross-encoder (its figures
        are labelled by that name)."""
        self.backend, self.models = backend, tuple(models)

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("embsvc_engine_state", "1 for the state each engine is in, 0 for the others",
                                  labels=[*LABELS, "state"])
        queue = GaugeMetricFamily("embsvc_engine_queue_depth",
                                  "Requests handed to the engine and not answered yet (waiting or computing); "
                                  "MAX_QUEUE_SIZE is its limit", labels=LABELS)
        restarts = CounterMetricFamily("embsvc_engine_restarts", "Times the engine process died and was restarted",
                                       labels=LABELS)
        requests = CounterMetricFamily("embsvc_engine_requests", "Requests the engine answered, by outcome",
                                       labels=[*LABELS, "outcome"])
        texts = CounterMetricFamily("embsvc_engine_texts", "Texts (inputs) run through the model", labels=LABELS)
        tokens = CounterMetricFamily("embsvc_engine_tokens",
                                     "Tokens run through the model, special tokens included",
                                     labels=LABELS)
        batch_requests = SummaryMetricFamily("embsvc_engine_batch_requests",
                                             "Requests merged into one forward pass", labels=LABELS)
        batch_texts = SummaryMetricFamily("embsvc_engine_batch_texts", "Texts in one forward pass", labels=LABELS)
        batch_seconds = SummaryMetricFamily("embsvc_engine_batch_duration_seconds",
                                            "A forward pass's own time on the device", labels=LABELS)
        for engine in self.backend.snapshot():
            labels, stats = [str(engine.index), engine.device], engine.stats
            for name in STATES:
                state.add_metric([*labels, name], 1.0 if engine.state.name.lower() == name else 0.0)
            queue.add_metric(labels, engine.queue_size)
            restarts.add_metric(labels, engine.restarts)
            requests.add_metric([*labels, "ok"], stats.processed_requests)
            requests.add_metric([*labels, "failed"], stats.failed_requests)
            requests.add_metric([*labels, "dropped"], stats.dropped_requests)
            texts.add_metric(labels, stats.batched_inputs)
            tokens.add_metric(labels, stats.tokens)
            batch_requests.add_metric(labels, stats.batches, stats.batched_requests)
            batch_texts.add_metric(labels, stats.batches, stats.batched_inputs)
            batch_seconds.add_metric(labels, stats.batches, stats.processing_seconds)
        yield from (state, queue, restarts, requests, texts, tokens, batch_requests, batch_texts, batch_seconds)
        yield from self._lanes()
        yield from self._models()

    def _models(self) -> Iterator[Metric]:
        """Each model's share of the figures above: bge-m3's and the cross-encoder's."""
        labels = [*LABELS, "model"]
        requests = CounterMetricFamily("embsvc_engine_model_requests", "Requests the engine answered, by model",
                                       labels=labels)
        inputs = CounterMetricFamily("embsvc_engine_model_inputs",
                                     "Inputs run through the model: texts, or (query, passage) pairs", labels=labels)
        tokens = CounterMetricFamily("embsvc_engine_model_tokens", "Tokens run through the model, by model",
                                     labels=labels)
        seconds = SummaryMetricFamily("embsvc_engine_model_batch_duration_seconds",
                                      "A forward pass's own time on the device, by model", labels=labels)
        for engine in self.backend.snapshot():
            for name, rerank in self.models:
                figures, model_labels = engine.stats.model(rerank), [str(engine.index), engine.device, name]
                requests.add_metric(model_labels, figures.requests)
                inputs.add_metric(model_labels, figures.inputs)
                tokens.add_metric(model_labels, figures.tokens)
                seconds.add_metric(model_labels, figures.batches, figures.processing_seconds)
        yield from (requests, inputs, tokens, seconds)

    def _lanes(self) -> Iterator[Metric]:
        """The interactive and bulk lanes (gpu_pool/engine/lanes.py)."""
        labels = [*LABELS, "lane"]
        queue = GaugeMetricFamily("embsvc_engine_lane_queue_depth",
                                  "Requests in the engine waiting for their first pass, by lane", labels=labels)
        wait = SummaryMetricFamily("embsvc_engine_lane_wait_seconds",
                                   "From a request's arrival in the engine to its first pass, by lane", labels=labels)
        latency = SummaryMetricFamily("embsvc_engine_lane_latency_seconds",
                                      "From a request's arrival in the engine to its answer, by lane", labels=labels)
        preemptions = CounterMetricFamily("embsvc_engine_preemptions",
                                          "Interactive passes run between the steps of a bulk pass", labels=LABELS)
        pass_tokens = GaugeMetricFamily("embsvc_engine_bulk_pass_tokens",
                                        "Tokens a bulk pass may hold now: sized so that a step takes at most "
                                        "INTERACTIVE_MAX_WAIT_MS", labels=LABELS)
        for engine in self.backend.snapshot():
            engine_labels = [str(engine.index), engine.device]
            for lane in (Lane.INTERACTIVE, Lane.BULK):
                figures, lane_labels = engine.stats.lane(lane), [*engine_labels, lane.name.lower()]
                queue.add_metric(lane_labels, figures.queue)
                wait.add_metric(lane_labels, figures.requests, figures.wait_seconds)
                latency.add_metric(lane_labels, figures.requests, figures.latency_seconds)
            preemptions.add_metric(engine_labels, engine.stats.preemptions)
            pass_tokens.add_metric(engine_labels, engine.stats.bulk_pass_tokens)
        yield from (queue, wait, latency, preemptions, pass_tokens)
