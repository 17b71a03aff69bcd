"""``python -m core.predict --pacs URL``: analyse the chest radiograph studies of a PACS, write rows, send results.

For every study found (QIDO-RS: ``--since``/``--until`` dates, ``--accession``; CR/DX studies unless an accession
is given, so that a CT or SR study asked for by accession gets its reason): the study is planned
(:mod:`core.pacs.studies`), each frontal image is retrieved in memory and analysed like a file, and written as
the same CSV/JSON rows as files, by the same writer (:mod:`core.result_rows`; ``file`` =
``study/series/instance`` UIDs; a ``sent`` column is added). A
study not analysed gets one row whose ``error`` says why. With ``--send`` each analysis becomes a TID 1500 SR and a
Secondary Capture of its top learnt finding's map (:mod:`core.pacs.results`), stored back in the study (STOW-RS,
retried); a study already holding an SR of the same model version is skipped and says so.

An interrupted run resumes: with ``--out results.csv`` already there, rows that are final (analysed, or skipped
with a reason) are kept and their instances not analysed again; rows that say "not reached" (the PACS went down)
or whose results could not be sent are dropped and done again.

Exit status as for files: 0 every study found was analysed (or already held this model's SR); 1 some study or
image was skipped or refused, or a result could not be sent (its row says why); 2 the tool could not run (settings,
the PACS unreachable or refusing the credentials, the PACS going down mid-run: the studies not reached get a row).
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TextIO

import pydicom
from pydicom.uid import generate_uid
from tqdm import tqdm

from core.analysis import Analysis
from core.finite import invalid_analysis_message
from core.imaging.errors import ImageError, detail
from core.inference import Predictor
from core.pacs.cli import PacsUsageError
from core.pacs.client import PacsAuthError, PacsClient, PacsError, PacsUnavailableError, StudySummary
from core.pacs.credentials import PacsSettingsError, load_settings
from core.pacs.results import ModelIdentity, build_sc, build_sr, sr_model
from core.pacs.studies import StudyPlan, plan_study
from core.result_rows import ResultRows, ResultsFileError

__all__ = ["NOT_REACHED", "EarlierRows", "PacsRun", "earlier_rows", "model_identity", "run_pacs"]

EXIT_OK, EXIT_REFUSED, EXIT_TOOL = 0, 1, 2
#: Start of the ``error`` of a row whose study was not reached; a resumed run does it again.
NOT_REACHED = "Not analysed yet:"
SEND_FAILED = "not sent:"


def model_identity(predictor: Predictor, name: str) -> ModelIdentity:
    """Name, version (the card's tensor hash) and analysis parameters of a loaded variant."""
    loaded = predictor.get(name)
    version = (loaded.card.tensor_sha256 if loaded.card is not None else None) or "unknown"
    return ModelIdentity(name=name, version=version, parameters={
        "mc_samples": str(predictor.mc_samples), "seed": str(predictor.seed), "threshold": str(predictor.threshold)})


@dataclass
class Counts:
    """What a run did, for the closing line and the exit status."""

    analysed: int = 0
    already: int = 0
    skipped: int = 0
    refused: int = 0
    not_sent: int = 0
    resumed: int = 0
    sent: list[str] = field(default_factory=list)


@dataclass
class EarlierRows:
    """What an earlier run of the same CSV leaves final (see the module docstring): kept and not done again."""

    rows: list[dict[str, str]] = field(default_factory=list)
    #: ``file`` keys (study, or study/series/instance) of the kept rows: not analysed again.
    done: set[str] = field(default_factory=set)
    #: kept rows that say why something was not analysed (they make the exit status 1 again).
    refusals: int = 0


def earlier_rows(out: Path | None) -> EarlierRows:
    """The final rows of ``out`` from an earlier run: every row but those whose study was not reached or whose
    results could not be sent (a resumed run does those again). Nothing for a JSON file or a file not there.

    Raises:
        OSError: the file is there but cannot be read.
    """
    earlier = EarlierRows()
    if out is None or out.suffix.lower() == ".json" or not out.exists():
        return earlier
    with out.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            transient = row.get("error", "").startswith(NOT_REACHED) or row.get("sent", "").startswith(SEND_FAILED)
            if not transient and row.get("file"):
                earlier.rows.append(row)
                earlier.refusals += row["file"] not in earlier.done and bool(row.get("error"))
                earlier.done.add(row["file"])
    return earlier


@dataclass
class PacsRun:
    """One batch run over a PACS (see the module docstring)."""

    client: PacsClient
    predictor: Predictor
    send: bool = False
    progress: bool = True
    counts: Counts = field(default_factory=Counts)
    #: ``file`` keys finished by an earlier run of the same output file (:func:`earlier_rows`): not done again.
    done: set[str] = field(default_factory=set)

    def held_models(self, plan: StudyPlan) -> set[tuple[str, str]]:
        """``(algorithm name, version)`` of the HiCXR SRs the study already holds."""
        held = set()
        for ref in plan.results:
            if ref.modality != "SR":
                continue
            model = sr_model(self.client.retrieve_dataset(ref))
            if model is not None:
                held.add(model)
        return held

    def run(self, studies: list[StudySummary], rows: ResultRows) -> int:
        """Analyse ``studies`` in order, writing rows; returns the exit status."""
        variants = self.predictor.variant_names
        models = {name: model_identity(self.predictor, name) for name in variants}
        bar = tqdm(total=len(studies), unit="study", disable=not self.progress, file=sys.stderr)
        status = EXIT_OK
        try:
            for k, study in enumerate(studies):
                try:
                    self._study(study, rows, variants, models)
                except (PacsUnavailableError, PacsAuthError) as exc:
                    print(f"python -m core.predict: {exc}", file=sys.stderr)
                    self._not_reached(studies[k:], rows, variants, "the PACS stopped answering before this study "
                                      f"({type(exc).__name__})")
                    status = EXIT_TOOL
                    break
                except Exception as exc:  # noqa: BLE001 - report what was not reached instead of losing the run
                    print(f"python -m core.predict: internal error: {detail(exc)}", file=sys.stderr)
                    self._not_reached(studies[k:], rows, variants,
                                      f"the run stopped on an unexpected internal error ({type(exc).__name__})")
                    status = EXIT_TOOL
                    break
                bar.update()
        finally:
            bar.close()
        return status

    def _not_reached(self, rest: list[StudySummary], rows: ResultRows, variants: list[str], why: str) -> None:
        message = f"{NOT_REACHED} {why}; run the same command again to resume."
        for study in rest:
            if study.study_uid not in self.done:
                rows.error(study.study_uid, variants, message)

    def _study(self, study: StudySummary, rows: ResultRows, variants: list[str],
               models: dict[str, ModelIdentity]) -> None:
        if study.study_uid in self.done:
            self.counts.resumed += 1
            return
        plan = plan_study(study.study_uid, self.client.instances(study.study_uid))
        if plan.reason:
            rows.error(study.study_uid, variants, f"Skipped: {plan.reason}.")
            self.counts.skipped += 1
            return
        if all(ref.key in self.done for ref in plan.analyse):  # finished by an earlier run of this output file
            self.counts.resumed += 1
            return
        todo = list(variants)
        if self.send:
            held = self.held_models(plan)
            todo = [v for v in variants if (f"HiCXR {v}", models[v].version) not in held]
            if not todo:
                names = ", ".join(f"{v} ({models[v].short_version})" for v in variants)
                rows.error(study.study_uid, variants,
                           f"Skipped: already analysed: the study holds HiCXR's SR of {names}, the same model version.")
                self.counts.already += 1
                return
        sr_series = {v: generate_uid() for v in todo}
        sc_series = {v: generate_uid() for v in todo}
        for number, ref in enumerate(plan.analyse, start=1):
            if ref.key in self.done:
                self.counts.resumed += 1
                continue
            try:
                data = self.client.retrieve(ref)
                analyses = self.predictor.analyse_all(data, todo)
            except PacsUnavailableError:
                raise
            except (ImageError, PacsError) as exc:
                rows.error(ref.key, todo, str(exc))
                self.counts.refused += 1
                continue
            invalid = invalid_analysis_message(analyses)  # never a NaN in a row or an SR sent to the PACS
            if invalid is not None:
                rows.error(ref.key, todo, invalid)
                self.counts.refused += 1
                continue
            sent = {v: "" for v in todo}
            if self.send:
                source = pydicom.dcmread(BytesIO(data), stop_before_pixels=False)
                for v, analysis in analyses.items():
                    sent[v] = self._send(analysis, source, models[v], sr_series[v], sc_series[v], number)
            for v, analysis in analyses.items():
                rows.analysis(ref.key, analysis, {"sent": sent[v]})
            self.counts.analysed += 1
        for ref, why in plan.skipped:
            rows.error(ref.key, variants, f"Skipped: {why}.")

    def _send(self, analysis: Analysis, source: pydicom.Dataset, model: ModelIdentity, sr_series: str,
              sc_series: str, number: int) -> str:
        datasets = [build_sr(analysis, source, model, series_uid=sr_series, instance_number=number),
                    build_sc(analysis, source, model, series_uid=sc_series, instance_number=number)]
        outcome = self.client.store(datasets)
        if outcome.ok:
            self.counts.sent.extend(outcome.stored)
            return f"SR + map stored ({outcome.attempts} attempt{'s' if outcome.attempts > 1 else ''})"
        self.counts.not_sent += 1
        reasons = "; ".join(sorted(set(outcome.failed.values())))
        return f"{SEND_FAILED} {len(outcome.failed)} of 2 results after {outcome.attempts} attempts ({reasons}); " \
               "the row is kept and a resumed run sends again"


def run_pacs(args: argparse.Namespace, stdout: TextIO) -> int:
    """Execute ``--pacs``; returns the exit status. Raises :class:`PacsUsageError` for a usage mistake."""
    for name in ("since", "until"):
        value = getattr(args, name)
        if value is not None and not (len(value) == 8 and value.isdigit()):
            raise PacsUsageError(f"--{name} must be a date as YYYYMMDD, got {value!r}")
    if args.cams is not None:
        raise PacsUsageError("--cams is for files; with --pacs, --send stores each image's map in the PACS")
    try:
        settings = load_settings(args.pacs or None)
    except PacsSettingsError as exc:
        raise PacsUsageError(str(exc)) from None
    for note in settings.warnings:
        print(f"warning: {note}", file=sys.stderr)
    from core.model import ModelLoadError
    from core.registry import RegistryError, variant_selection

    try:
        predictor = Predictor(args.weights_dir, variant_selection(args.variants), mc_samples=args.mc, seed=args.seed,
                              threshold=args.threshold)
    except (RegistryError, ModelLoadError) as exc:
        raise PacsUsageError(str(exc)) from None
    client = PacsClient(settings)
    try:
        studies = client.search_studies(since=args.since, until=args.until, accession=args.accession,
                                        modalities=None if args.accession else ("CR", "DX"))
    except PacsError as exc:
        print(f"python -m core.predict: {exc}", file=sys.stderr)
        return EXIT_TOOL
    print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} found at {settings.url}", file=sys.stderr)
    try:
        earlier = earlier_rows(args.out)
        rows = ResultRows(args.out, stdout, list(predictor.taxonomy.labels), extra_fields=["sent"],
                          kept=earlier.rows)
    except OSError as exc:  # the earlier rows could not be read back
        print(f"python -m core.predict: cannot write the results to {args.out}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_TOOL
    except ResultsFileError as exc:
        print(f"python -m core.predict: {exc}", file=sys.stderr)
        return EXIT_TOOL
    if earlier.done:
        print(f"resuming: {len(earlier.done)} row(s) of {args.out} are kept and not done again", file=sys.stderr)
    job = PacsRun(client, predictor, send=args.send, progress=not args.no_progress, done=earlier.done)
    try:
        status = job.run(studies, rows)
    finally:
        rows.close()
    c = job.counts
    print(f"{c.analysed} image(s) analysed"
          + (f", {len(c.sent)} result(s) stored" if args.send else "")
          + (f"; {c.already} stud{'y' if c.already == 1 else 'ies'} already held this model's SR" if c.already else "")
          + (f"; {c.skipped} stud{'y' if c.skipped == 1 else 'ies'} skipped" if c.skipped else "")
          + (f"; {c.refused} image(s) refused" if c.refused else "")
          + (f"; {c.not_sent} analysis(es) not sent" if c.not_sent else "")
          + (f"; {c.resumed} done by an earlier run" if c.resumed else "")
          + (" (each has a row saying why)" if c.skipped or c.refused or c.not_sent else ""), file=sys.stderr)
    if status == EXIT_OK and (c.skipped or c.refused or c.not_sent or earlier.refusals):
        status = EXIT_REFUSED
    return status
