"""The video-QA model: shapes, masking, and MC dropout confined to the last layer."""
import pytest
import torch
import torch.nn as nn

from radi_fast.data import VideoQACollate
from radi_fast.model import ModelConfig, RadiModel, VideoQATransformer, build_model
from radi_fast.synthetic import SyntheticConfig, make_synthetic


@pytest.fixture(scope="module")
def setup():
    data = make_synthetic(SyntheticConfig(n_train=40, n_val=8, n_test=8, n_answers=120))
    batch = VideoQACollate(data.n_answers)([data.train[i] for i in range(6)])
    torch.manual_seed(0)
    return data, batch, build_model(data, ModelConfig(d_model=32, n_layers=2, n_heads=4))


def test_shapes(setup):
    data, batch, model = setup
    model.train()
    assert model(batch).shape == (6, 120)
    logits, mc = model.teacher_outputs(batch, T=5)
    assert logits.shape == (6, 120) and mc.shape == (6, 5, 120)
    assert model.mc_logits(batch, 3).shape == (6, 3, 120)
    assert model.training and all(m.training for m in model.modules())  # modes restored


def test_eval_is_deterministic_and_padding_is_ignored(setup):
    _, batch, model = setup
    model.eval()
    a = model(batch)
    assert torch.equal(a, model(batch))
    noisy = dict(batch)
    noisy["video_mask"] = batch["video_mask"].clone()
    noisy["video_mask"][:, 7:] = False
    noisy["video"] = batch["video"].clone()
    ref = model(noisy)
    noisy["video"][:, 7:] = 1e3  # padded frames must not matter
    torch.testing.assert_close(model(noisy), ref)


def test_mc_dropout_varies_only_the_last_layer(setup):
    _, batch, model = setup
    model.train()
    torch.manual_seed(1)
    logits, mc = model.teacher_outputs(batch, T=8)
    model.eval()
    torch.testing.assert_close(logits, model(batch))  # deterministic logits: no dropout anywhere
    assert mc.std(dim=1).mean() > 1e-3  # the passes differ
    # the same T passes, computed by hand: encode once without dropout, only the last layer in train mode
    with torch.no_grad():
        hidden = model.encode(batch)
        model.last_layer.train()
        torch.manual_seed(1)
        manual = model.decode(tuple(h.repeat_interleave(8, dim=0) for h in hidden)).view(6, 8, -1)
        model.eval()
    torch.manual_seed(1)
    _, mc2 = model.teacher_outputs(batch, T=8)
    torch.testing.assert_close(mc2, manual)
    # with the last layer's dropout at 0 the MC passes collapse onto the deterministic logits,
    # even though the body still has dropout 0.1: proof that only the last layer is stochastic
    for m in model.last_layer.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    try:
        model.train()
        logits, mc = model.teacher_outputs(batch, T=4)
        torch.testing.assert_close(mc, logits[:, None].expand_as(mc))
    finally:
        for m in model.last_layer.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.1
            if isinstance(m, nn.MultiheadAttention):
                m.dropout = 0.1


def test_mc_logits_cost_does_not_rerun_the_body(setup):
    _, batch, model = setup
    calls = []
    hook = model.body[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        model.teacher_outputs(batch, T=10)
    finally:
        hook.remove()
    assert len(calls) == 1


def test_gradients_reach_every_parameter(setup):
    data, batch, model = setup
    model.train()
    model.zero_grad()
    model(batch).logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    model.zero_grad()


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="divisible"):
        VideoQATransformer(10, 4, 10, ModelConfig(d_model=30, n_heads=4))
    with pytest.raises(ValueError, match="answer_features has 3 rows"):
        VideoQATransformer(10, 4, 10, ModelConfig(), answer_features=torch.zeros(3, 5))
    model = VideoQATransformer(10, 4, 10, ModelConfig(d_model=16, n_heads=2, max_frames=4))
    batch = {"video": torch.zeros(1, 6, 4), "video_mask": torch.ones(1, 6, dtype=torch.bool),
             "question": torch.ones(1, 3, dtype=torch.long), "question_mask": torch.ones(1, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match="6 frames"):
        model(batch)


class MeanPoolModel(RadiModel):
    """A user's own model: mean-pooled frames -> MLP with dropout as the last layer."""

    def __init__(self, n_answers, feat_dim):
        super().__init__()
        self.n_answers = n_answers
        self.body = nn.Linear(feat_dim, 16)
        self.last_layer = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, n_answers))

    def encode(self, batch):
        return (torch.relu(self.body(batch["video"].mean(1))),)

    def decode(self, hidden):
        return self.last_layer(hidden[0])


def test_plug_in_a_custom_model(setup):
    data, batch, _ = setup
    model = MeanPoolModel(data.n_answers, data.feat_dim)
    logits, mc = model.teacher_outputs(batch, T=4)
    assert logits.shape == (6, 120) and mc.shape == (6, 4, 120) and mc.std(1).mean() > 0
    with pytest.raises(TypeError):
        RadiModel()  # abstract: encode and decode are required
