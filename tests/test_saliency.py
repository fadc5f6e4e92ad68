"""Saliency maps (robust_med.saliency): a model that reads one image region lights up that region
and not the rest, by every method; high activation means high saliency; integrated gradients are
complete; a layer name that does not exist lists the candidates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import saliency
from robust_med.errors import ConfigError
from robust_med.models.resnet import ResNetClassifier

SIZE = 16
REGION = (slice(0, 8), slice(0, 8))  # The top-left quarter: the only part the model reads.


class Window(nn.Module):
  """Keeps the feature map inside REGION, zero elsewhere (no parameters)."""

  @nn.compact
  def __call__(self, a):
    window = np.zeros((SIZE, SIZE, 1), np.float32)
    window[REGION] = 1
    return a * window


class RegionReader(nn.Module):
  """Class 1's logit grows with the bright pixels inside REGION; class 0's shrinks with them."""

  @nn.compact
  def __call__(self, x):
    a = nn.relu(nn.Conv(4, (3, 3), name='features')(x))
    r = Window(name='region')(a)
    return nn.Dense(2, name='logits')(jnp.mean(r, axis=(1, 2)))


def region_reader():
  model = RegionReader()
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1)))['params']
  kernel = np.zeros((3, 3, 1, 4), np.float32)
  kernel[1, 1, 0, :] = 1.0  # Each feature channel is the pixel itself.
  dense = np.zeros((4, 2), np.float32)
  dense[:, 0], dense[:, 1] = -1.0, 1.0
  params = {'features': {'kernel': jnp.asarray(kernel), 'bias': jnp.zeros(4)},
            'logits': {'kernel': jnp.asarray(dense), 'bias': jnp.zeros(2)}}
  return model, params


def two_blobs():
  """One bright blob inside REGION and an identical one outside it."""
  x = np.full((1, SIZE, SIZE, 1), 0.1, np.float32)
  x[0, 2:5, 2:5] = 1.0     # inside
  x[0, 10:13, 10:13] = 1.0  # outside
  return jnp.asarray(x)


def score(outputs, target):
  return jnp.take_along_axis(outputs, target[:, None], axis=-1)[:, 0]


def inside_fraction(m):
  m = np.asarray(m)[0]
  inside = np.zeros_like(m, bool)
  inside[REGION] = True
  return m[inside].sum() / m.sum()


@pytest.mark.parametrize('method', saliency.METHODS)
def test_a_model_that_reads_one_region_lights_up_that_region_only(method):
  model, params = region_reader()
  settings = saliency.SaliencySettings(method=method, smoothgrad_samples=8, ig_steps=16)
  layer = saliency.resolve_layer(model, params, (1, SIZE, SIZE, 1), '')
  maps = saliency.Explainer(model, score, settings, layer).maps(params, two_blobs(),
                                                                jnp.array([1]))
  m = np.asarray(maps)
  assert m.shape == (1, SIZE, SIZE) and m.min() >= 0
  assert inside_fraction(m) > 0.97, inside_fraction(m)
  blob_in, blob_out = m[0, 2:5, 2:5].mean(), m[0, 10:13, 10:13].mean()
  assert blob_in > 10 * max(blob_out, 1e-6)
  if method in saliency.CAM_METHODS:  # High activation = high saliency (the bright blob).
    assert m[0, 3, 3] > m[0, 6, 6] > 0 or m[0, 3, 3] > 2 * m[0, 7, 7]


def test_default_layer_is_the_last_top_level_spatial_module_and_unknown_names_list_candidates():
  model, params = region_reader()
  names = [n for n, _ in saliency.spatial_layers(model, params, (1, SIZE, SIZE, 1))]
  assert names == ['features', 'region']
  assert saliency.resolve_layer(model, params, (1, SIZE, SIZE, 1), '') == 'region'
  with pytest.raises(ConfigError, match="'nope'.*features.*region"):
    saliency.resolve_layer(model, params, (1, SIZE, SIZE, 1), 'nope')


def test_gradcam_of_the_class_the_evidence_speaks_against_is_empty():
  """Class 0's logit falls with the bright pixels: Grad-CAM keeps only positive evidence."""
  model, params = region_reader()
  explainer = saliency.Explainer(model, score, saliency.SaliencySettings('gradcam'), 'region')
  maps = np.asarray(explainer.maps(params, two_blobs(), jnp.array([0])))
  assert np.all(maps == 0)


def test_gradcam_on_a_resnet_is_upsampled_to_the_input_and_batched_per_sample():
  model = ResNetClassifier(num_classes=3, base_width=4, blocks=1, stages=3)
  x = jax.random.uniform(jax.random.key(1), (3, 24, 24, 1))
  params = model.init(jax.random.key(0), x[:1])['params']
  layer = saliency.resolve_layer(model, params, x.shape, 'stage2_block0')
  explainer = saliency.Explainer(model, score, saliency.SaliencySettings('gradcam'), layer)
  target = jnp.array([0, 1, 2])
  maps = np.asarray(explainer.maps(params, x, target))
  assert maps.shape == (3, 24, 24) and np.isfinite(maps).all() and maps.min() >= 0
  alone = np.asarray(explainer.maps(params, x[1:2], target[1:2]))
  np.testing.assert_allclose(alone[0], maps[1], rtol=1e-4, atol=1e-6)


def test_smoothgrad_without_noise_is_the_input_gradient():
  model, params = region_reader()
  x, t = two_blobs(), jnp.array([1])
  grad = saliency.Explainer(model, score, saliency.SaliencySettings('gradient')).maps(params, x, t)
  smooth = saliency.Explainer(model, score, saliency.SaliencySettings(
      'smoothgrad', smoothgrad_samples=3, smoothgrad_sigma=0.0)).maps(params, x, t)
  np.testing.assert_allclose(np.asarray(smooth), np.asarray(grad), rtol=1e-6)


class Smooth(nn.Module):
  """A small smooth convolutional classifier (tanh, biases): the path integral is well posed."""

  @nn.compact
  def __call__(self, x):
    a = jnp.tanh(nn.Conv(6, (3, 3))(x))
    a = jnp.tanh(nn.Conv(6, (3, 3), strides=(2, 2))(a))
    return nn.Dense(3)(jnp.mean(a, axis=(1, 2)) * 4)


@pytest.mark.parametrize('baseline', saliency.IG_BASELINES)
def test_integrated_gradients_are_complete_within_one_percent(baseline):
  model = Smooth()
  x = jax.random.uniform(jax.random.key(2), (3, 16, 16, 1))
  params = model.init(jax.random.key(3), x[:1])['params']
  explainer = saliency.Explainer(model, score, saliency.SaliencySettings(
      'integrated_gradients', ig_steps=32, ig_baseline=baseline))
  attributions, gap = explainer.attributions(params, x, jnp.array([0, 1, 2]))
  total = np.asarray(attributions).reshape(3, -1).sum(axis=1)
  gap = np.asarray(gap)
  assert np.all(np.abs(gap) > 1e-2)  # A real difference to account for.
  np.testing.assert_array_less(np.abs(total - gap), 0.01 * np.abs(gap))
  maps = np.asarray(explainer.maps(params, x, jnp.array([0, 1, 2])))
  np.testing.assert_allclose(maps, np.abs(np.asarray(attributions)).sum(-1), rtol=1e-5)


def test_bad_settings_are_config_errors():
  with pytest.raises(ConfigError, match='lime'):
    saliency.check_settings(saliency.SaliencySettings('lime'))
  with pytest.raises(ConfigError, match='noise'):
    saliency.check_settings(saliency.SaliencySettings('integrated_gradients', ig_baseline='noise'))
  with pytest.raises(ConfigError, match='ig_steps'):
    saliency.check_settings(saliency.SaliencySettings('integrated_gradients', ig_steps=0))
