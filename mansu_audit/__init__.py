"""mansu-audit: certify that LLM unlearning survives quantization.

Pipeline: data -> model loading -> (unlearning method) -> quantizers -> evaluation
-> statistics -> certificate -> report. Each stage is a module with plain functions
over dataclasses; `mansu_audit.api` strings them together and the CLI is a thin
layer over it.
"""
from mansu_audit.api import Evaluation, evaluate
from mansu_audit.certificate import Certificate, read_certificate
from mansu_audit.certify import certify
from mansu_audit.data import Bundle, MCQItem, load_bundle
from mansu_audit.evaluate import MCQResult, evaluate_mcq
from mansu_audit.loading import LoadedModel, load_model
from mansu_audit.tune import TuneResult, tune
from mansu_audit.verdicts import Outcome, Verdict
from mansu_audit.verification import Verification, verify

from mansu_audit._version import __version__

__all__ = ["Bundle", "Certificate", "certify", "read_certificate", "Evaluation", "LoadedModel", "MCQItem", "MCQResult", "evaluate", "evaluate_mcq",
           "load_bundle", "load_model", "tune", "TuneResult", "Outcome", "Verdict", "Verification", "verify",
           "__version__"]
