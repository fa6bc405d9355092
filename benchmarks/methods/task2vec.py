"""Baseline: a Task2Vec-style embedding (Achille et al. 2019, "Task2Vec: Task Embedding for
Meta-Learning").

Task2Vec embeds a task by the diagonal Fisher information of a fixed probe network's feature
extractor, after fitting a classifier head on the task's data. Here the "task" of a zoo model is
its task's inputs labelled by the model's own predictions, so the embedding reflects what the
model computes on its data. Fisher values are averaged per filter as in the paper. With nothing
downloaded at run time the probe network is a fixed, seeded, randomly initialised small CNN
(the paper uses an ImageNet-trained ResNet), which is the main departure from the paper.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from benchmarks.methods._probes import _in_channels, common_probe, model_inputs, task_probe
from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.architectures import build_architecture
from modelset.errors import ModelSetError
from modelset.reader import ModelSet

log = logging.getLogger(__name__)


@register_method
class Task2Vec(SimilarityMethod):
    """Embedding: per-filter mean diagonal Fisher of the probe trunk ``(n, n_filters)``."""

    meta = MethodMeta(
        name="task2vec",
        learned=False,
        needs_data=True,
        invariances=("permutation", "scale", "function"),
        reference="Achille et al. 2019, Task2Vec: Task Embedding for Meta-Learning",
        description="diagonal Fisher of a fixed probe CNN on the model's task inputs, labelled by the model",
        config={"probe_size": 32, "head_steps": 20, "probe_seed": 0},
    )

    def _fit_key(self, ms: ModelSet, train_ids: list[str], seed: int) -> object:
        return str(ms.root)  # a fixed probe: the same embeddings for every split and seed

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(int(self.config["probe_seed"]))  # the probe network is fixed, not seeded per run
        self.probe_net = build_architecture("cnn3", {"in_channels": _in_channels(ms), "num_classes": 2}).eval()
        torch.random.set_rng_state(generator_state)
        self.trunk = {k: v.detach() for k, v in self.probe_net.named_parameters() if not k.startswith("head")}
        self._inputs: dict[str, torch.Tensor] = {}
        self.probe_source = "task data (test split)"

    def _task_inputs(self, ms: ModelSet, task_id: str) -> torch.Tensor:
        if task_id not in self._inputs:
            n = int(self.config["probe_size"])
            try:
                self._inputs[task_id] = task_probe(ms, task_id, n)[0]
            except (ModelSetError, ValueError, OSError) as exc:
                if "_common" not in self._inputs:
                    log.warning("task2vec: no data for task %s (%s); using the common probe", task_id, exc)
                    self._inputs["_common"], self.probe_source = common_probe(ms, n)
                self._inputs[task_id] = self._inputs["_common"]
        return self._inputs[task_id]

    def _fisher(self, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
        """Per-filter mean diagonal empirical Fisher ``(n_filters,)`` of the trunk for ``(x, y)``."""
        with torch.no_grad():
            feats = self.probe_net.embed(x)
        # Fit the head (multinomial logistic regression) on frozen features, as Task2Vec does first.
        head = torch.nn.Linear(feats.shape[1], k)
        # Zero start: the (convex) head fit then depends on (x, y) only, not on the global RNG.
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        optimizer = torch.optim.LBFGS(head.parameters(), max_iter=int(self.config["head_steps"]))

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(head(feats), y) + 1e-3 * head.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        head_params = {f"head.{n}": p.detach() for n, p in head.named_parameters()}

        def nll(trunk: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            params = {**trunk, **head_params}
            logits = functional_call(self.probe_net, params, (xi[None],))
            return F.cross_entropy(logits, yi[None])

        # The probe's own head is swapped for the fitted one through functional_call's params.
        self.probe_net.head = torch.nn.Linear(feats.shape[1], k)
        grads = vmap(grad(nll), in_dims=(None, 0, 0))(self.trunk, x, y)
        fisher = []
        for g in grads.values():
            if g.ndim > 2:  # conv weights (B, out, in, kh, kw): average per output filter
                fisher.append(g.pow(2).mean(dim=0).reshape(g.shape[1], -1).mean(dim=1))
        return torch.cat(fisher)

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        out = []
        for mid in tqdm(ids, desc="task2vec", leave=False, disable=len(ids) < 200):
            x = self._task_inputs(ms, str(ms.metadata.at[mid, "task"]))
            with torch.no_grad():
                logits = ms.model(mid, checkpoint)(model_inputs(ms, mid, x))
            out.append(self._fisher(x, logits.argmax(dim=1), logits.shape[1]))
        # Fisher values span orders of magnitude: compare log-Fisher profiles, centred per model so
        # the cosine is their correlation and a global scale of the Fisher does not matter.
        logf = torch.log(torch.stack(out) + 1e-20)
        return logf - logf.mean(dim=1, keepdim=True)
