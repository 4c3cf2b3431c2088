"""The weighted k-NN classifier on frozen features (Wu et al. 2018, DINO).

Every query is classified by its k nearest neighbours in a bank of labelled
features: both sides are L2-normalised, similarity is the cosine (their dot
product), and each of the k most similar bank entries votes for its class with
weight `exp(similarity / temperature)`. A class's score is the sum of its
votes; the prediction is the class of highest score.

Choices where the definition leaves room:

* Ties between bank entries at the k-th place: the lower bank index is taken
  (`jax.lax.top_k` keeps the lower index first among equal values).
* Ties between class scores (for top-1 and top-5): the lower class index is
  ranked first, again by `jax.lax.top_k`.
* `k` larger than the bank: every bank entry is a neighbour (k = N).
* A zero feature vector stays zero after normalisation (its similarity to
  everything is 0).
* Bank labels outside `[0, num_classes)` (e.g. -1, an image without a class)
  take a neighbour's place but vote for no class.

Queries are processed `chunk_size` at a time, so the similarities held in
memory are `[chunk_size, N]` float32 (`4 * chunk_size * N` bytes: 0.65 GB for
128 queries against the 1.28M ImageNet train images), not `[M, N]`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07
DEFAULT_CHUNK_SIZE = 128
_EPS = 1e-12  # Floor of the norm, as in the usual `x / max(|x|, eps)`.


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows of `x` [..., D] divided by their L2 norm (float32)."""
  x = jnp.asarray(x, jnp.float32)
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, _EPS)


@functools.partial(jax.jit, static_argnames=('num_classes', 'k',
                                             'chunk_size'))
def knn_predict(bank_features: jax.Array, bank_labels: jax.Array,
                query_features: jax.Array, num_classes: int,
                k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Class scores of the weighted k-NN classifier.

  Args:
    bank_features: [N, D] features of the labelled bank (any float dtype).
    bank_labels: [N] int class of each bank entry, 0-based.
    query_features: [M, D] features to classify.
    num_classes: C, the number of classes.
    k: neighbours per query (min(k, N) are used).
    temperature: T of the vote weights `exp(cosine / T)`.
    chunk_size: queries whose similarities to the whole bank are computed at
      once; sets the memory, not the result.

  Returns:
    float32 [M, C]: for each query, the summed weights of its neighbours of
    each class (0 for a class without a neighbour).
  """
  if k < 1:
    raise ValueError(f'k={k}: use k >= 1')
  bank = l2_normalize(bank_features)
  k = min(k, bank.shape[0])

  def scores(query):  # [D] -> [C]; vmapped over a chunk by lax.map.
    similarity = bank @ l2_normalize(query)  # [N]
    top_similarity, top_index = jax.lax.top_k(similarity, k)
    votes = jax.nn.one_hot(bank_labels[top_index], num_classes)  # [k, C]
    return jnp.exp(top_similarity / temperature) @ votes

  return jax.lax.map(scores, jnp.asarray(query_features),
                     batch_size=chunk_size)


def knn_top1_top5(bank_features: jax.Array, bank_labels: jax.Array,
                  query_features: jax.Array, query_labels: np.ndarray,
                  num_classes: int, *, k: int = DEFAULT_K,
                  temperature: float = DEFAULT_TEMPERATURE,
                  chunk_size: int = DEFAULT_CHUNK_SIZE
                  ) -> dict[str, float | int]:
  """Top-1 and top-5 accuracy of the weighted k-NN classifier.

  Args:
    bank_features, bank_labels, num_classes, k, temperature, chunk_size: as
      in `knn_predict`.
    query_features: [M, D] features of the evaluation images.
    query_labels: [M] int true class of each query, 0-based.

  Returns:
    {'top1': fraction of queries whose highest-scoring class is theirs,
     'top5': fraction with theirs among the min(5, C) highest,
     'num_examples': M}.

  Raises:
    ValueError: no queries.
  """
  query_labels = np.asarray(query_labels)
  if not len(query_labels):
    raise ValueError('no evaluation examples')
  scores = knn_predict(bank_features, bank_labels, query_features,
                       num_classes, k, temperature, chunk_size)
  _, ranked = jax.lax.top_k(scores, min(5, num_classes))
  hits = np.asarray(ranked) == query_labels[:, None]
  return {'top1': float(hits[:, 0].mean()),
          'top5': float(hits.any(axis=1).mean()),
          'num_examples': len(query_labels)}


# The evaluator: `evaluate(backbone, settings)` of the registry.

# Settings and defaults. `source`: `records:<dir>`, `folder:<dir>` or
# `tfds:<name>` (`classification_data`); `num_classes` None: the source's
# (required for records).
EVALUATE_DEFAULTS = dict(source='', train_split='train',
                         eval_split='validation', data_dir=None,
                         image_size=224, batch_size=256, num_classes=None,
                         k=DEFAULT_K, temperature=DEFAULT_TEMPERATURE)


def evaluate(frozen, settings) -> dict[str, float]:
  """k-NN top-1 and top-5 of a frozen backbone's pooled features.

  The bank is the centre crops of the train split; the queries those of
  the evaluation split.

  Args:
    frozen: a `backbone.Backbone`.
    settings: any of `EVALUATE_DEFAULTS`' keys; `source` is required.

  Returns:
    {'top1', 'top5'}: fractions in [0, 1].

  Raises:
    ValueError: an unknown or missing setting, or bad data.
  """
  from detcon import backbone, classification_data  # pylint: disable=g-import-not-at-top
  settings = dict(settings)
  unknown = sorted(set(settings) - set(EVALUATE_DEFAULTS))
  if unknown:
    raise ValueError(f'unknown k-NN evaluation settings {unknown}; known: '
                     f'{", ".join(sorted(EVALUATE_DEFAULTS))}')
  s = dict(EVALUATE_DEFAULTS, **settings)
  if not s['source']:
    raise ValueError('the k-NN evaluation needs settings.source '
                     '(records:<dir>, folder:<dir> or tfds:<name>)')
  num_classes = s['num_classes'] or classification_data.num_classes(
      s['source'], split=s['train_split'], data_dir=s['data_dir'])
  if not num_classes:
    raise ValueError(f'settings.num_classes is needed for {s["source"]} '
                     '(records do not store their number of classes)')
  features_fn = backbone.pooled_features_fn(frozen)

  def extract(split):
    features, labels = [], []
    for batch in classification_data.make_dataset(
        s['source'], split=split, image_size=s['image_size'], train=False,
        batch_size=s['batch_size'], data_dir=s['data_dir']
    ).as_numpy_iterator():
      features.append(np.asarray(features_fn(batch['images'])))
      labels.append(batch['labels'])
    return np.concatenate(features), np.concatenate(labels)

  bank, bank_labels = extract(s['train_split'])
  queries, query_labels = extract(s['eval_split'])
  result = knn_top1_top5(bank, bank_labels, queries, query_labels,
                         num_classes, k=s['k'], temperature=s['temperature'])
  return {'top1': result['top1'], 'top5': result['top5']}
