"""``gcomp train --architecture federated``: FedAvg on Flower's simulation engine with gcomp-compressed updates.

One run per compressor.  Each run starts Flower's simulation engine
(:func:`flwr.simulation.run_simulation`, Ray backend) with ``clients`` virtual
SuperNodes; each holds one partition of the training split (the digits, or
MNIST-1D generated once under the output directory; IID, or
Dirichlet(``non_iid``): :mod:`gcomp.flower.partition`).  Every round the
server samples ``fraction`` of the clients (at least one) from its own seeded
generator, so every compressor sees the same clients in the same rounds; each
trains ``local_epochs`` epochs of SGD from the global model and replies
through :func:`gcomp.flower.compression_mod`; the server
(:class:`gcomp.flower.CompressionStrategy` around FedAvg) decodes, checks and
averages, then evaluates the global model on the test split.

Per round the results hold the test accuracy and loss, the bytes each
sampled client sent up and received down (the array payloads Flower carried),
the clients dropped and why, and modelled time and energy: the slowest
sampled client's measured local time plus its bytes through its own link
(:mod:`gcomp.train.links`), and radio plus CPU joules per client.
"""

import dataclasses
import datetime
import json
import logging
import os
import sys
import time

import numpy as np

__all__ = ["train_federated", "run_federated", "validate_federated", "client_app", "server_app", "federated_kpis",
           "parse_local_dp"]

_DATA_CACHE = {}  # (seed, clients, non_iid, dataset, data path) -> data and partitions, one entry per process


def _data(cfg):
    """(x_train, y_train, x_test, y_test, parts) of a run's ``cfg``, cached per process.

    The digits by default; mnist1d from the ``data_path`` the runner generated (``dataset_params`` checked)."""
    seed, clients, non_iid = cfg["seed"], cfg["clients"], cfg["non_iid"]
    key = (seed, clients, non_iid, cfg.get("dataset", "digits"), cfg.get("data_path"))
    if key not in _DATA_CACHE:
        from gcomp.flower.partition import partition

        from .data import load_dataset

        x_tr, y_tr, x_te, y_te = load_dataset(cfg)
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = (x_tr, y_tr, x_te, y_te, partition(y_tr, clients, non_iid, seed))
    return _DATA_CACHE[key]


def _model(cfg):
    """The run's model, initialised from its seed, for the dataset's sample size (64 for the digits)."""
    from .models import build_model

    return build_model(cfg["model"], cfg["hidden"], cfg["seed"], cfg.get("inputs", 64))


def _train_local(cfg, arrays, partition_id, server_round):
    """Local SGD on one client's partition from ``arrays``; returns (state dict, examples, loss, seconds)."""
    import torch

    torch.set_num_threads(1)
    x_tr, y_tr, _, _, parts = _data(cfg)
    idx = parts[partition_id]
    model = _model(cfg)
    model.load_state_dict(arrays.to_torch_state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    rng = np.random.Generator(np.random.PCG64([cfg["seed"], server_round, partition_id]))
    bs = min(cfg["batch_size"], idx.size)
    x = torch.from_numpy(x_tr)
    y = torch.from_numpy(y_tr)
    start = time.perf_counter()
    total, count = 0.0, 0
    for _ in range(cfg["local_epochs"]):
        order = idx[rng.permutation(idx.size)]
        for b in range(max(1, idx.size // bs)):
            batch = torch.from_numpy(order[b * bs: (b + 1) * bs])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            total += float(loss) * batch.numel()
            count += batch.numel()
    return model.state_dict(), int(idx.size), total / max(1, count), time.perf_counter() - start


def client_app(cfg, outer_mods=()):
    """The ClientApp of a run: local training, the gcomp mod (unless ``cfg["compressor"]`` is None), then the DP mod
    of ``cfg["local_dp"]`` (mods run outside in: the reply is clipped and noised, then compressed).  ``outer_mods``
    go before (outside) gcomp's mod."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from gcomp.flower import compression_mod

    mods = list(outer_mods)
    if cfg.get("compressor") is not None:
        mods.append(compression_mod(cfg["compressor"], error_feedback=cfg.get("error_feedback", "auto"),
                                    seed=cfg["seed"]))
    train_mods = []  # after (inside) the app's mods, on train messages only: LocalDpMod does not look at the type
    if cfg.get("local_dp"):
        from flwr.clientapp.mod import LocalDpMod

        dp = cfg["local_dp"]
        train_mods.append(LocalDpMod(dp["clip"], dp["sensitivity"], dp["epsilon"], dp["delta"]))
    app = ClientApp(mods=mods)

    @app.train(mods=train_mods)
    def train(msg, context):
        pid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        state, n, loss, seconds = _train_local(cfg, msg.content["arrays"], pid, rnd)
        metrics = MetricRecord({"num-examples": n, "train-loss": loss, "train-seconds": seconds})
        return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)

    @app.query()
    def query(msg, context):
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)

    return app


def _fedavg_class():
    from flwr.app import MessageType, RecordDict
    from flwr.serverapp.strategy import FedAvg

    class SeededFedAvg(FedAvg):
        """FedAvg that samples clients by partition from its own seeded generator and aggregates in partition order.

        Flower's FedAvg samples with the global ``random`` module and aggregates in arrival order; this one
        gives every compressor the same clients in the same rounds, and the same summation order.
        """

        def __init__(self, partitions, seed, **kwargs):
            super().__init__(**kwargs)
            self.partitions = dict(partitions)  # node id -> partition id
            self.seed = seed
            self.sampled = {}

        def configure_train(self, server_round, arrays, config, grid):
            nodes = sorted(self.partitions, key=self.partitions.get)
            k = min(len(nodes), max(int(len(nodes) * self.fraction_train), self.min_train_nodes))
            rng = np.random.Generator(np.random.PCG64([self.seed, 0xFED, server_round]))
            chosen = sorted(rng.choice(len(nodes), size=k, replace=False).tolist())
            node_ids = [nodes[i] for i in chosen]
            self.sampled[server_round] = [self.partitions[n] for n in node_ids]
            config["server-round"] = server_round
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            return self._construct_messages(record, node_ids, MessageType.TRAIN)

        def aggregate_train(self, server_round, replies):
            replies = sorted(replies, key=lambda m: self.partitions.get(m.metadata.src_node_id, -1))
            return super().aggregate_train(server_round, replies)

    return SeededFedAvg


def __getattr__(name):
    if name == "SeededFedAvg":
        return _fedavg_class()
    raise AttributeError(name)


def _partitions(grid, expected, timeout):
    """``{node id: partition id}`` of every connected node, asked with one query message each."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    deadline = time.time() + timeout
    while len(nodes := list(grid.get_node_ids())) < expected:
        if time.time() > deadline:
            raise RuntimeError(f"expected {expected} clients to connect within {timeout:.0f} s, found {len(nodes)}")
        time.sleep(0.2)
    msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in nodes]
    replies = grid.send_and_receive(msgs, timeout=timeout)
    mapping = {}
    for r in replies:
        if r.has_error():
            raise RuntimeError(f"node {r.metadata.src_node_id} failed the partition query: {r.error.reason}")
        mapping[int(r.metadata.src_node_id)] = int(r.content["metrics"]["partition-id"])
    if sorted(mapping.values()) != list(range(expected)):
        raise RuntimeError(f"expected partitions 0..{expected - 1} from the clients, found {sorted(mapping.values())}")
    return mapping


def _evaluate(cfg, arrays):
    import torch

    _, _, x_te, y_te, _ = _data(cfg)
    model = _model(cfg)
    model.load_state_dict(arrays.to_torch_state_dict())
    with torch.no_grad():
        logits = model(torch.from_numpy(x_te))
        loss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_te)))
        acc = float((logits.argmax(1).numpy() == y_te).mean())
    return acc, loss


def server_app(cfg, sink):
    """The ServerApp of a run; fills ``sink`` (a dict) with per-round records, the final model and the history."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp import ServerApp

    from gcomp.flower import CompressionStrategy

    app = ServerApp()

    @app.main()
    def main(grid, context):
        partitions = _partitions(grid, cfg["clients"], cfg["timeout"])
        inner = _fedavg_class()(partitions, cfg["seed"], fraction_train=cfg["fraction"], fraction_evaluate=0.0,
                                min_train_nodes=1, min_evaluate_nodes=0, min_available_nodes=cfg["clients"])
        strategy = inner if cfg.get("compressor") is None else CompressionStrategy(
            inner, uplink=cfg["compressor"], downlink=cfg.get("downlink"))
        initial = ArrayRecord(_model(cfg).state_dict())
        records = []
        clock = [time.perf_counter()]

        def evaluate(server_round, arrays):
            acc, loss = _evaluate(cfg, arrays)
            now = time.perf_counter()
            records.append({"round": server_round, "accuracy": acc, "loss": loss, "wall_s": now - clock[0]})
            return MetricRecord({"accuracy": acc, "loss": loss})

        result = strategy.start(grid, initial, num_rounds=cfg["rounds"], timeout=cfg["timeout"],
                                train_config=ConfigRecord({"local-epochs": cfg["local_epochs"]}), evaluate_fn=evaluate)
        sink["records"] = records
        sink["partitions"] = partitions
        sink["sampled"] = dict(inner.sampled)
        sink["history"] = list(getattr(strategy, "history", []))
        sink["final"] = {k: v.numpy() for k, v in result.arrays.items()}
        if cfg.get("results_path"):  # the deployment engine runs this in its own process: results go to a file
            with open(cfg["results_path"], "w") as f:
                json.dump({"records": records, "partitions": {str(k): v for k, v in partitions.items()},
                           "sampled": {str(k): v for k, v in inner.sampled.items()},
                           "history": [_jsonable(h) for h in sink["history"]]}, f)

    return app


def _jsonable(history):
    return {k: ({str(n): v for n, v in val.items()} if isinstance(val, dict) else val) for k, val in history.items()}


def run_federated(cfg, app=None):
    """Run one federated training on the simulation engine; returns the ServerApp's sink (see :func:`server_app`).

    ``app``: a ClientApp to run instead of :func:`client_app` ``(cfg)`` (its train handler replies as that one's).
    """
    from flwr.simulation import run_simulation

    sink = {}
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": int(cfg.get("ray_cpus") or max(1, min(os.cpu_count() or 1, 4))),
                             "include_dashboard": False, "logging_level": "error", "log_to_driver": False}}
    old = logging.getLogger("flwr").level
    if not cfg.get("verbose"):
        logging.getLogger("flwr").setLevel(logging.WARNING)
    # one thread per client (torch also sets it in the worker); NUMBA_NUM_THREADS is left alone: numba refuses a change
    # once this process has started its threads (the server decodes with gcomp's kernels)
    env = {"OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    # Flower's Ray backend also sets this process's PYTHONPATH to its sys.path (for Ray's workers) and leaves it:
    # restored below, or every later subprocess would import from this process's sys.path (e.g. a source tree)
    saved = {k: os.environ.get(k) for k in (*env, "PYTHONPATH")}
    os.environ.update(env)
    try:
        run_simulation(server_app=server_app(cfg, sink), client_app=app or client_app(cfg), num_supernodes=cfg["clients"],
                       backend_config=backend)
    finally:
        logging.getLogger("flwr").setLevel(old)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if "records" not in sink:
        raise RuntimeError("the federated run ended without results (see Flower's log above)")
    return sink


# -- gcomp train --architecture federated ------------------------------------------------------------


def validate_federated(opts):
    """Check the federated options of ``opts`` (a TrainOptions); returns one Link per client."""
    import math

    import gcomp

    from .data import parse_dataset, train_samples
    from .links import parse_links

    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ValueError("--architecture federated needs Flower: pip install 'gcomp[flower]'") from None
    try:
        dataset_name, _ = parse_dataset(opts.dataset)
    except ValueError as exc:
        raise ValueError(f"--dataset {opts.dataset}: {exc}") from None
    samples = train_samples(opts.dataset)
    if not 2 <= opts.clients <= 200:
        raise ValueError(f"expected 2 to 200 --clients, found {opts.clients}")
    if not (math.isfinite(opts.fraction) and 0 < opts.fraction <= 1):
        raise ValueError(f"expected --fraction in (0, 1], found {opts.fraction}")
    if opts.rounds < 1:
        raise ValueError(f"expected at least one --rounds, found {opts.rounds}")
    if opts.local_epochs < 1:
        raise ValueError(f"expected --local-epochs >= 1, found {opts.local_epochs}")
    if opts.non_iid is not None and not (math.isfinite(opts.non_iid) and opts.non_iid > 0):
        raise ValueError(f"expected --non-iid ALPHA > 0 (Dirichlet concentration), found {opts.non_iid}")
    if 2 * opts.clients > samples:
        raise ValueError(f"expected at most {samples // 2} clients ({samples} training samples, two each "
                         f"at least), found {opts.clients}")
    if opts.batch_size < 1:
        raise ValueError(f"expected a batch size of at least 1, found {opts.batch_size}")
    if not (math.isfinite(opts.lr) and opts.lr > 0):
        raise ValueError(f"expected a positive learning rate, found {opts.lr}")
    if opts.model not in ("mlp", "cnn", "cnn1d"):
        raise ValueError(f"expected model mlp, cnn or cnn1d, found {opts.model!r}")
    if opts.model == "cnn" and dataset_name != "digits":
        raise ValueError(f"expected --model mlp or cnn1d for {dataset_name} because cnn takes 8x8 digit images")
    if not 0.0 < opts.target_accuracy <= 1.0:
        raise ValueError(f"expected a target accuracy in (0, 1], found {opts.target_accuracy}")
    if opts.emulate:
        raise ValueError("--emulate is not available with --architecture federated (Flower's simulation engine runs "
                         "the clients in Ray workers); the link model gives the time")
    if not opts.compressors:
        raise ValueError("expected at least one --compressor")
    twice = sorted({spec for spec in opts.compressors if opts.compressors.count(spec) > 1})
    if twice:
        raise ValueError(f"expected each --compressor once, found {', '.join(twice)} more than once")
    if opts.error_feedback not in ("auto", "residual", "none"):
        raise ValueError(f"expected --error-feedback auto, residual or none with --architecture federated (the server "
                         f"decodes each client's update alone), found {opts.error_feedback}")
    for spec in opts.compressors:
        try:
            comp = gcomp.compressor(spec)
        except gcomp.errors.ConfigError as exc:
            raise ValueError(f"{exc} (torch's DDP hooks do not apply to federated runs)") from None
        if comp.codec is None:
            raise ValueError(f"expected a compressor with a wire codec for federated runs, found {spec}")
    if opts.local_dp:
        parse_local_dp(opts.local_dp)
    if opts.downlink is not None:
        try:
            comp = gcomp.compressor(opts.downlink)
        except gcomp.errors.ConfigError as exc:
            raise ValueError(f"--downlink {opts.downlink}: {exc}") from None
        if comp.codec is None:
            raise ValueError(f"expected a --downlink compressor with a wire codec, found {opts.downlink}")
    if opts.groups:
        raise ValueError("--groups describes a two-level network of workers; federated clients each have their own "
                         "--link")
    links = parse_links(opts.link, opts.clients, opts.technology)
    if not opts.timeout > 0:
        raise ValueError(f"expected a positive timeout, found {opts.timeout}")
    return links


def parse_local_dp(text):
    """``"clip=1,epsilon=8[,delta=1e-5,sensitivity=1]"`` -> LocalDpMod's arguments (sensitivity defaults to clip)."""
    import math

    values = {}
    for part in str(text).split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in ("clip", "epsilon", "delta", "sensitivity"):
            raise ValueError(f"expected --local-dp clip=C,epsilon=E[,delta=D,sensitivity=S], found {part.strip()!r} "
                             f"in {text!r}")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"expected a number for {key} in --local-dp, found {value.strip()!r}") from None
    missing = [k for k in ("clip", "epsilon") if k not in values]
    if missing:
        raise ValueError(f"expected --local-dp to give {' and '.join(missing)}, found {text!r}")
    dp = {"clip": values["clip"], "epsilon": values["epsilon"], "delta": values.get("delta", 1e-5),
          "sensitivity": values.get("sensitivity", values["clip"])}
    if not all(math.isfinite(v) for v in dp.values()) or dp["clip"] <= 0 or dp["epsilon"] <= 0 \
            or not 0 < dp["delta"] < 1 or dp["sensitivity"] < 0:
        raise ValueError(f"expected clip > 0, epsilon > 0, 0 < delta < 1 and sensitivity >= 0 in --local-dp, found {dp}")
    return dp


def _config(opts, spec, data=None):
    """A run's config; ``data``: the dataset fields (runner's ``_dataset_config``), digits when None."""
    from .data import input_size

    return {**(data or {"dataset": "digits"}), "inputs": input_size(opts.dataset),
            "local_dp": parse_local_dp(opts.local_dp) if opts.local_dp else None, "compressor": spec,
            "clients": opts.clients, "fraction": opts.fraction, "rounds": opts.rounds,
            "local_epochs": opts.local_epochs, "non_iid": opts.non_iid, "model": opts.model, "hidden": opts.hidden,
            "batch_size": opts.batch_size, "lr": opts.lr, "momentum": opts.momentum, "seed": opts.seed,
            "error_feedback": opts.error_feedback, "timeout": opts.timeout, "downlink": opts.downlink}


def federated_kpis(opts, spec, sink, links):
    """A run's results from the ServerApp's sink: per-round records, bytes, modelled time and energy."""
    from .links import energy_joules

    history = {h["round"]: h for h in sink["history"]}
    part_of = sink["partitions"]  # node id -> partition (client index)
    n = opts.clients
    sent = [0] * n
    received = [0] * n
    cpu = [0.0] * n
    modelled = 0.0
    rounds = []
    records = sink["records"]
    dense = None
    for rec in records[1:]:
        h = history[rec["round"]]
        dense = h["dense_model_bytes"]
        round_time = 0.0
        for node, down in h["downlink_bytes"].items():
            c = part_of[node]
            up = h["uplink_bytes"].get(node, 0)
            sent[c] += up
            received[c] += down
            seconds = float(h["metrics"].get(node, {}).get("train-seconds", 0.0))
            cpu[c] += seconds
            link = links[c]
            round_time = max(round_time, seconds + link.seconds_for(down) + link.seconds_for(up))
        modelled += round_time
        rounds.append({"epoch": rec["round"], "round": rec["round"], "accuracy": rec["accuracy"], "loss": rec["loss"],
                       "measured_wall_s": rec["wall_s"], "modelled_s": modelled,
                       "clients": sorted(part_of[node] for node in h["downlink_bytes"]),
                       "dropped": {str(part_of.get(node, node)): reason for node, reason in h["dropped"].items()},
                       "uplink_bytes": sum(h["uplink_bytes"].values()),
                       "downlink_bytes": sum(h["downlink_bytes"].values()),
                       "uplink_bytes_per_client": {str(part_of[node]): b for node, b in h["uplink_bytes"].items()},
                       "bytes_sent_per_worker": list(sent), "bytes_received_per_worker": list(received)})
    clock = "modelled_s"
    to_target = next((r for r in rounds if r["accuracy"] >= opts.target_accuracy), None)
    energy = [energy_joules(sent[i], received[i], links[i], cpu[i], opts.cpu_watts) for i in range(n)]
    uploads = sum(len(history[r["round"]]["uplink_bytes"]) for r in rounds)
    up_total = sum(sent)
    return {
        "compressor": spec, "kind": "baseline" if spec == "none" else "gcomp", "architecture": "federated",
        "topology": None, "clients": n, "fraction": opts.fraction, "non_iid": opts.non_iid,
        "local_epochs": opts.local_epochs, "rounds": len(rounds),
        "local_dp": parse_local_dp(opts.local_dp) if opts.local_dp else None,
        "downlink": opts.downlink,
        "initial_accuracy": records[0]["accuracy"],
        "final_accuracy": rounds[-1]["accuracy"], "best_accuracy": max(r["accuracy"] for r in rounds),
        "rounds_to_target": None if to_target is None else to_target["round"],
        "uplink_mb_to_target": None if to_target is None else sum(
            r["uplink_bytes"] for r in rounds if r["round"] <= to_target["round"]) / 1e6,
        "time_to_target_s": None if to_target is None else to_target[clock],
        "clock": "modelled (link model)", "measured_wall_s": rounds[-1]["measured_wall_s"],
        "modelled_s": rounds[-1]["modelled_s"],
        "uplink_bytes_total": up_total, "downlink_bytes_total": sum(received),
        "uplink_bytes_per_client_per_round": up_total / max(1, uploads),
        "dense_model_bytes": dense,
        "compression_ratio": dense * uploads / up_total if up_total else None,
        "dropped_total": sum(len(r["dropped"]) for r in rounds),
        "energy_joules_per_worker": energy, "energy_joules_total": sum(energy),
        "sampled": {str(k): v for k, v in sink["sampled"].items()}, "epochs": rounds,
    }


def train_federated(opts):
    """``gcomp train --architecture federated``: one simulation per compressor; results.json, plots; the results."""
    links = validate_federated(opts)
    from .runner import _check_out, _clear_stale_runs, _dataset_config, _dataset_record

    _check_out(opts.out)
    _clear_stale_runs(opts.out)
    data = _dataset_config(opts)  # mnist1d: generated once into out/data/, every client loads that file
    import flwr
    import torch

    import gcomp

    split = "IID" if opts.non_iid is None else f"Dirichlet({opts.non_iid:g})"
    print(f"gcomp train: federated on Flower {flwr.__version__} (simulation engine), {opts.clients} clients, "
          f"{opts.fraction:g} per round, {opts.rounds} rounds of {opts.local_epochs} local epoch(s), {split}, "
          f"{opts.model} on {opts.dataset}{'; downlink ' + opts.downlink if opts.downlink else ''}"
          f"{'; local DP ' + opts.local_dp + ' before compression' if opts.local_dp else ''}; "
          f"{len(opts.compressors)} run(s): {', '.join(opts.compressors)}", flush=True)
    header = {"gcomp": gcomp.__version__, "torch": torch.__version__, "flwr": flwr.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "workers": opts.clients, "clients": opts.clients, "fraction": opts.fraction, "rounds": opts.rounds,
              "local_epochs": opts.local_epochs, "non_iid": opts.non_iid, "partition": split, "backend": "flower",
              "model": opts.model, "hidden": opts.hidden, "architecture": "federated", "topology": None,
              "links": [link.spec for link in links], "emulated": False, "target_accuracy": opts.target_accuracy,
              "seed": opts.seed, "options": dataclasses.asdict(opts),
              "local_dp": parse_local_dp(opts.local_dp) if opts.local_dp else None, "downlink": opts.downlink,
              "dataset": opts.dataset, "dataset_generator": _dataset_record(opts)}
    runs = []
    for spec in opts.compressors:
        start = time.time()
        sink = run_federated(_config(opts, spec, data))
        run = federated_kpis(opts, spec, sink, links)
        run["simulation_wall_s"] = time.time() - start
        runs.append(run)
        if opts.progress:
            print(f"  {spec:<28} final acc {run['final_accuracy']:.3f}, uplink {run['uplink_bytes_total'] / 1e6:.2f} MB "
                  f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    results = {"header": header, "runs": runs}
    with open(os.path.join(opts.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if opts.plots:
        from .report import plot_results

        results["plots"] = plot_results(results, opts.out)
    return results
