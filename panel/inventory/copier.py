"""What a doodba-copier-template project says about itself: its ``.copier-answers.yml``.

The panel never clones a repository itself (the servers fetch it, with the project's deploy key), so it reads the
answers where the code first arrives: on the server, in the first deploy's checkout (``git show
<commit>:.copier-answers.yml``). What the answers know fills what the panel was not told yet:

* the environment's main domain and aliases, when both are empty, from ``domains_prod`` (production) or
  ``domains_test`` (test and staging; the template has no staging domains): the first host of the first group
  that redirects nowhere and has no path prefix is the main domain (the template's own rule), the other hosts of
  that group and the hosts of groups redirecting to it are aliases;
* the project's Odoo version, while no environment of the project has been deployed yet (``odoo_version``);
* the project's name and PostgreSQL version are reported in the log (the name was chosen when the project was
  created; the PostgreSQL version is the compose files' own ``db`` image).

The file comes from a repository: it is read size-capped, parsed with ``yaml.safe_load``, and every value goes
through the panel's validators before it is used; anything else is reported and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from panel.inventory.choices import ODOO_VERSIONS, EnvironmentKind
from panel.inventory.models import Environment, Project
from panel.jobs.runner import JobContext
from panel.remote import Target, run_capture
from panel.validators import MAX_ALIASES, POSTGRES_VERSION_RE, validate_domain, validate_name

ANSWERS_FILE = ".copier-answers.yml"
MAX_ANSWERS_BYTES = 64 * 1024
MAX_GROUPS = 50


@dataclass
class Answers:
    """The answers the panel uses, each validated (empty when absent or refused), and what was refused."""

    odoo_version: str = ""
    project_name: str = ""
    postgres_version: str = ""
    domains: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # "prod"/"test" → (main, aliases)
    refused: list[str] = field(default_factory=list)


def _odoo_version(value: Any) -> str:
    # copier.yml declares it ``type: float`` (16.0), so it arrives as a float; older answers may hold a string.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return ""
    try:
        version = f"{float(value):.1f}"
    except ValueError:
        return ""
    return version if version in ODOO_VERSIONS else ""


def _domains(value: Any) -> tuple[str, list[str]] | None:
    """Main domain and aliases of a ``domains_*`` answer (a list of groups with ``hosts``); None when unusable."""
    if not isinstance(value, list) or not value or len(value) > MAX_GROUPS:
        return None
    groups = [group for group in value if isinstance(group, dict) and isinstance(group.get("hosts"), list)]
    main_group = next((g for g in groups if not g.get("redirect_to") and not g.get("path_prefixes") and g["hosts"]),
                      None)  # fmt: skip
    if main_group is None:
        return None
    main = main_group["hosts"][0]
    aliases = list(main_group["hosts"][1:])
    for group in groups:
        if group is not main_group and group.get("redirect_to") == main and not group.get("path_prefixes"):
            aliases += group["hosts"]
    for host in [main, *aliases]:
        if not isinstance(host, str):
            raise ValidationError("a host is not a string")
        validate_domain(host)
    unique = [host for index, host in enumerate(aliases) if host != main and host not in aliases[:index]]
    if len(unique) > MAX_ALIASES:
        raise ValidationError(f"more than {MAX_ALIASES} aliases")
    return main, unique


def parse_answers(text: str) -> Answers:
    """Read ``.copier-answers.yml``: YAML (safe loader only), then each answer the panel uses, validated."""
    answers = Answers()
    if len(text.encode()) > MAX_ANSWERS_BYTES:
        answers.refused.append(f"{ANSWERS_FILE} is larger than {MAX_ANSWERS_BYTES // 1024} KiB: not read.")
        return answers
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        answers.refused.append(f"{ANSWERS_FILE} is not valid YAML ({str(exc).splitlines()[0][:120]}).")
        return answers
    if not isinstance(data, dict):
        answers.refused.append(f"{ANSWERS_FILE} is not a mapping of answers.")
        return answers
    if "odoo_version" in data:
        answers.odoo_version = _odoo_version(data["odoo_version"])
        if not answers.odoo_version:
            answers.refused.append(f"odoo_version {str(data['odoo_version'])[:20]!r} is not a version the panel knows.")
    name = data.get("project_name")
    if isinstance(name, str):
        try:
            validate_name(name)
            answers.project_name = name
        except ValidationError:
            answers.refused.append(f"project_name {name[:70]!r} is not a valid name.")
    postgres = data.get("postgres_version")
    if isinstance(postgres, (str, int, float)) and not isinstance(postgres, bool):
        if POSTGRES_VERSION_RE.fullmatch(str(postgres)):
            answers.postgres_version = str(postgres)
    for key, which in (("domains_prod", "prod"), ("domains_test", "test")):
        if key not in data:
            continue
        try:
            found = _domains(data[key])
        except ValidationError as exc:
            answers.refused.append(f"{key}: {' '.join(exc.messages)[:200]}")
            continue
        if found:
            answers.domains[which] = found
    return answers


def read_answers(target: Target, checkout: str, commit: str) -> str | None:
    """The text of ``.copier-answers.yml`` at ``commit`` in the checkout on the server, None when there is none."""
    result = run_capture(
        target, ["git", "-C", checkout, "show", f"{commit}:{ANSWERS_FILE}"], timeout=60, limit=MAX_ANSWERS_BYTES + 1
    )
    return result.stdout if result.ok else None


def as_record(answers: Answers, commit: str) -> dict[str, Any]:
    """What ``Project.copier_answers`` keeps: the validated answers, the commit they were read at, and when."""
    return {
        "commit": commit,
        "read_at": timezone.now().isoformat(),
        "project_name": answers.project_name,
        "odoo_version": answers.odoo_version,
        "postgres_version": answers.postgres_version,
        "domains": {which: {"main": main, "aliases": aliases} for which, (main, aliases) in answers.domains.items()},
    }


def stored_domains(project: Project, kind: str) -> tuple[str, list[str]] | None:
    """The main domain and aliases the project's stored answers give an environment of ``kind`` (``domains_prod``
    for production, ``domains_test`` for the others), None when they give none."""
    which = "prod" if kind == EnvironmentKind.PRODUCTION else "test"
    found = (project.copier_answers or {}).get("domains", {}).get(which)
    if not isinstance(found, dict) or not isinstance(found.get("main"), str) or not found["main"]:
        return None
    aliases = [alias for alias in found.get("aliases", []) if isinstance(alias, str)]
    return found["main"], aliases


def apply_project_answers(context: JobContext, project: Project, answers: Answers) -> list[str]:
    """Fill the project from the answers; returns the names of the fields it set.

    The Odoo version changes while none of the project's environments was deployed; the PostgreSQL version when it
    is unset or different (the repository's compose files decide which db image runs); the name while it is still
    the slug (a project created with a blank name).
    """
    changed: list[str] = []
    if answers.odoo_version and answers.odoo_version != project.odoo_version:
        with transaction.atomic():
            deployed = Environment.objects.filter(project=project, current_deployment__isnull=False).exists()
            if deployed:
                context.write(f"⚠ {ANSWERS_FILE} says Odoo {answers.odoo_version}, the project says "
                              f"{project.odoo_version}: change the project if the answers are right.")  # fmt: skip
            else:
                Project.objects.filter(pk=project.pk).update(odoo_version=answers.odoo_version)
                context.write(f"Odoo version {answers.odoo_version}: from {ANSWERS_FILE} (was {project.odoo_version}).")
                project.odoo_version = answers.odoo_version
                changed.append("odoo_version")
    if answers.project_name and answers.project_name != project.name:
        if project.name == project.slug:
            Project.objects.filter(pk=project.pk).update(name=answers.project_name)
            context.write(f"Name {answers.project_name!r}: from project_name in {ANSWERS_FILE}.")
            project.name = answers.project_name
            changed.append("name")
        else:
            context.write(
                f"{ANSWERS_FILE} names the project {answers.project_name!r}; the panel keeps {project.name!r}."
            )
    if answers.postgres_version and answers.postgres_version != project.postgres_version:
        Project.objects.filter(pk=project.pk).update(postgres_version=answers.postgres_version)
        was = f" (was {project.postgres_version})" if project.postgres_version else ""
        context.write(f"PostgreSQL {answers.postgres_version}: from postgres_version in {ANSWERS_FILE}{was}.")
        project.postgres_version = answers.postgres_version
        changed.append("postgres_version")
    return changed


def apply_answers(context: JobContext, environment: Environment, answers: Answers) -> list[str]:
    """Fill what the panel was not told from the answers; returns the names of the fields it set.

    Only empty or never-used values change: the environment's domain and aliases when both are empty, and the
    project's fields as ``apply_project_answers`` says. Each change goes through the model's own validation (a
    domain another environment of the server routes is refused there) and is written in the log.
    """
    project: Project = environment.project
    changed: list[str] = []
    for line in answers.refused:
        context.write(f"⚠ {ANSWERS_FILE}: {line} Ignored.")
    which = "prod" if environment.kind == EnvironmentKind.PRODUCTION else "test"
    if which in answers.domains and not environment.domain and not environment.aliases:
        main, aliases = answers.domains[which]
        environment.domain, environment.aliases = main, aliases
        try:
            environment.full_clean()
        except ValidationError as exc:
            environment.domain, environment.aliases = "", []
            context.write(f"⚠ {ANSWERS_FILE}: domains_{which} not used: {' '.join(exc.messages)[:300]}")
        else:
            Environment.objects.filter(pk=environment.pk).update(domain=main, aliases=aliases)
            changed += ["domain", "aliases"] if aliases else ["domain"]
            also = f", aliases {', '.join(aliases)}" if aliases else ""
            context.write(f"Domain {main}{also}: from domains_{which} in {ANSWERS_FILE}.")
    return changed + apply_project_answers(context, project, answers)


def use_answers(context: JobContext, target: Target, checkout: str, environment: Environment, commit: str) -> None:
    """Read the answers of the checked-out commit and fill what is still unset (``apply_answers``); the first
    deploy of an environment calls it right after fetching, before anything is rendered from those fields."""
    text = read_answers(target, checkout, commit)
    if text is None:
        context.write(f"No {ANSWERS_FILE} in the repository: nothing to read from it.")
        return
    answers = parse_answers(text)
    apply_answers(context, environment, answers)
    Project.objects.filter(pk=environment.project_id).update(copier_answers=as_record(answers, commit))


def use_project_answers(
    context: JobContext, target: Target, checkout: str, project: Project, commit: str
) -> dict[str, Any]:
    """Read the answers of the checked-out commit for the project itself (*Read the project's answers*): fill the
    project (``apply_project_answers``) and keep the answers, whose domains new environments start from."""
    text = read_answers(target, checkout, commit)
    if text is None:
        context.write(f"No {ANSWERS_FILE} at {commit[:12]}: nothing to read from it.")
        record: dict[str, Any] = {"commit": commit, "read_at": timezone.now().isoformat(), "missing": True}
        Project.objects.filter(pk=project.pk).update(copier_answers=record)
        return {"changed": [], "answers": record}
    answers = parse_answers(text)
    for line in answers.refused:
        context.write(f"⚠ {ANSWERS_FILE}: {line} Ignored.")
    changed = apply_project_answers(context, project, answers)
    for which, (main, aliases) in sorted(answers.domains.items()):
        kinds = "production" if which == "prod" else "staging, test and development"
        also = f" (aliases {', '.join(aliases)})" if aliases else ""
        context.write(f"domains_{which}: {main}{also}, for new {kinds} environments.")
    record = as_record(answers, commit)
    Project.objects.filter(pk=project.pk).update(copier_answers=record)
    return {"changed": changed, "answers": record}
