"""klqp: one mini-batch variational objective, stated once, compiled to PyMC or NumPyro.

>>> import klqp as kq
>>> with kq.Model("normal_mean") as model:
...     mu = kq.Global("mu", kq.Normal(0.0, 10.0))
...     kq.Observed("y", kq.Normal(mu, 1.0))
>>> print(kq.explain(model, total_size=1000, batch_size=100).coefficients["loglik"])
10.0
"""

from . import backends, cache, checkpoint, data, guard, loop, nn, schedules, steps
from .api import compile, fit
from .distributions import (Bernoulli, Beta, Binomial, Categorical, Cauchy, ContinuousBernoulli,
                            Dirichlet, Distribution, Exponential, Gamma, HalfCauchy, HalfNormal, Mixture,
                            HalfStudentT, Laplace, LKJCholesky, LogNormal, MvNormal,
                            NegativeBinomial, Normal,
                            Poisson,
                            OrderedLogistic, StudentT, Uniform, Weibull,
                            ZeroInflatedNegativeBinomial, ZeroInflatedPoisson)
from .explain import Explanation, explain
from .checkpoint import CheckpointError, load_result
from .guard import NonFiniteError
from .expr import (abs, clip, concat, cumsum, exp, expand_dims, lgamma, log, log1p,
                   log_softmax, logit, logsumexp, maximum, mean, minimum, relu, reshape,
                   sigmoid, softmax, softplus, sqrt, square, stack, sum, tanh, where)
from .model import (ROW_INDEX, Data, Deterministic, Global, Local, Model, ModelError, Observed,
                    Param, Potential, column)
from .objective import Shared, Terms
from .problem import Problem
from .results import FitResult
from .steps import GlobalStep, LocalStep, RowAdam
from ._version import __version__

__all__ = [
    "Mixture",
    "Model", "Data", "Global", "Local", "Observed", "Param", "Deterministic", "Potential",
    "column", "ModelError", "ROW_INDEX",
    "Normal", "HalfNormal", "LogNormal", "Exponential", "Gamma", "Beta", "Bernoulli",
    "Binomial", "Poisson", "Categorical", "StudentT", "ContinuousBernoulli", "HalfCauchy",
    "HalfStudentT", "Cauchy", "Laplace", "Weibull", "NegativeBinomial", "ZeroInflatedPoisson",
    "ZeroInflatedNegativeBinomial", "OrderedLogistic", "Uniform", "MvNormal", "Dirichlet",
    "LKJCholesky", "Distribution",
    "exp", "log", "log1p", "sqrt", "abs", "lgamma", "sigmoid", "softplus", "tanh", "relu",
    "maximum", "minimum", "sum", "mean", "logsumexp", "cumsum", "concat", "stack",
    "expand_dims", "reshape", "where", "softmax", "log_softmax", "logit", "square", "clip",
    "nn",
    "Shared", "Terms", "schedules", "backends", "compile", "fit", "explain", "Explanation",
    "Problem", "FitResult", "LocalStep", "GlobalStep", "RowAdam", "NonFiniteError",
    "CheckpointError", "load_result",
]
