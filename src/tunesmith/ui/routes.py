"""The UI's JSON endpoints: runs, the New-run form, jobs, data, compare, chat and export.

Runs are named by their path in the workspace (``runs/sql``), passed as ``?name=`` or in the
JSON body. Slow library calls (planning, loading a model for chat, exporting) run in a worker
thread so the event loop keeps serving the live curves.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse

from tunesmith.errors import UserInputError
from tunesmith.ui import UPLOAD_LIMIT_BYTES, forms, runs, tools
from tunesmith.ui.events import run_events
from tunesmith.ui.workspace import DATA_SUFFIXES, Workspace

UPLOADS = "uploads"  # where uploaded data files go, inside the workspace


async def body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or a 400."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise UserInputError("the request body must be JSON") from None
    if not isinstance(data, dict):
        raise UserInputError("the request body must be a JSON object")
    return data


def text(data: dict[str, Any], key: str, *, required: bool = True, default: str = "") -> str:
    value = data.get(key, default)
    if value is None or value == "":
        if required:
            raise UserInputError(f"'{key}' is required")
        return default
    if not isinstance(value, str):
        raise UserInputError(f"'{key}' must be a string")
    return value


def key_of(data: dict[str, Any]) -> str:
    """The idempotency key of a launch or resume (the browser makes one per click)."""
    key = text(data, "key")
    if len(key) > 100:
        raise UserInputError("'key' is at most 100 characters")
    return key


def add_routes(app: FastAPI) -> None:  # noqa: C901 - one flat list of small endpoints
    ws: Workspace = app.state.workspace
    jobs = app.state.jobs
    chat = app.state.chat

    def state_of(name: str) -> str:
        from tunesmith.rundir import RunDir

        state = RunDir(ws.resolve(name)).state()
        if state != "running" and jobs.alive(name):
            return "starting"  # launched or resumed; the trainer has not taken the lock yet
        return state

    def in_workspace(result: dict[str, Any]) -> dict[str, Any]:
        """``result`` with the workspace's absolute path left out of the records' sources."""
        return json.loads(json.dumps(result).replace(json.dumps(str(ws.root) + "/")[1:-1], ""))

    # -- runs -------------------------------------------------------------------------------
    @app.get("/api/runs")
    async def list_runs():
        out = []
        for r in ws.runs():
            row = runs.summary(r, ws.root)
            row["state"] = state_of(row["name"])
            out.append(row)
        return {"runs": out, "running": jobs.running(), "workspace": str(ws.root)}

    @app.get("/api/run")
    async def get_run(name: str):
        path = ws.resolve(name)
        from tunesmith.rundir import RunDir

        run = RunDir(path)
        if not run.is_run():
            if jobs.alive(name) or jobs.log_path(name).is_file():
                return {
                    "name": name,
                    "state": state_of(name),
                    "metrics": [],
                    "log": jobs.log_tail(name),
                }
            raise UserInputError(f"{name}: not a run directory of this workspace")
        out = runs.detail(run, ws.root)
        out["state"] = state_of(name)
        out["log"] = jobs.log_tail(name)
        return out

    @app.get("/api/run/events")
    async def run_stream(name: str, request: Request):
        from tunesmith.rundir import RunDir

        run = RunDir(ws.resolve(name))
        stream = run_events(run, lambda: state_of(name), request.is_disconnected)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.post("/api/run/stop")
    async def stop_run(request: Request):
        name = text(await body(request), "name")
        return {"name": name, "pid": jobs.stop(name)}

    @app.post("/api/run/resume")
    async def resume_run(request: Request):
        data = await body(request)
        return {"name": jobs.resume(text(data, "name"), key_of(data))}

    @app.get("/api/file")
    async def get_file(path: str):
        p = ws.resolve(path)
        if not p.is_file():
            raise UserInputError(f"{path}: no such file in the workspace")
        kind = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        return FileResponse(p, media_type=kind)

    # -- new run ----------------------------------------------------------------------------
    @app.get("/api/form")
    async def form():
        return {"fields": forms.field_schema(), "data_files": ws.data_files()}

    @app.post("/api/plan")
    async def plan(request: Request):
        values = (await body(request)).get("values", {})
        errs = forms.errors(values)
        if errs:
            return {"errors": errs, "plan": None}
        cfg = forms.validate(values)
        try:
            planned = await asyncio.to_thread(forms.plan, cfg, ws.root)
        except UserInputError as exc:
            return {"errors": [], "plan": None, "plan_error": str(exc)}
        return {"errors": [], "plan": planned}

    @app.post("/api/launch")
    async def launch(request: Request):
        data = await body(request)
        key = key_of(data)
        values = data.get("values", {})
        cfg = forms.validate(values)
        if not cfg.force:
            planned = await asyncio.to_thread(forms.plan, cfg, ws.root)
            if not planned["fits"]:
                from fastapi.responses import JSONResponse

                msg = planned["refusal"]
                return JSONResponse(
                    {"error": {"message": msg, "key": "force"}, "needs_force": True}, 409
                )
        return {"name": jobs.launch(cfg, key)}

    # -- data -------------------------------------------------------------------------------
    @app.get("/api/data")
    async def data_files():
        return {"files": ws.data_files()}

    @app.post("/api/upload")
    async def upload(request: Request, filename: str):
        from pathlib import PurePosixPath

        name = PurePosixPath(filename.replace("\\", "/")).name
        if not name or name.startswith(".") or not name.endswith(DATA_SUFFIXES):
            raise UserInputError(
                f"{filename}: a data file ({', '.join(DATA_SUFFIXES)}) is expected"
            )
        raw = await request.body()
        if len(raw) > UPLOAD_LIMIT_BYTES:
            raise UserInputError(f"{name}: larger than {UPLOAD_LIMIT_BYTES // 1024**2} MiB")
        folder = ws.private("incoming")
        staged = folder / name
        staged.write_bytes(raw)
        try:
            report = await asyncio.to_thread(tools.clean_report, ws, staged)
        except UserInputError:
            staged.unlink(missing_ok=True)
            raise
        dest = ws.resolve(f"{UPLOADS}/{name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(dest)
        return {"path": ws.relative(dest), "kept": report["kept"], "input": report["input_records"]}

    @app.post("/api/data/clean")
    async def clean(request: Request):
        path = ws.resolve(text(await body(request), "file"))
        if not path.is_file():
            raise UserInputError(f"{ws.relative(path)}: no such file in the workspace")
        return in_workspace(await asyncio.to_thread(tools.clean_report, ws, path))

    @app.post("/api/data/preview")
    async def preview(request: Request):
        data = await body(request)
        file = text(data, "file", required=False)
        model = text(data, "model", required=False, default="embedded")
        if model != "embedded":
            forms.check_paths({"model": model})
            local = ws.root / model
            model = str(local) if local.exists() else model
        n, seq_len = data.get("n", 3), data.get("seq_len", 512)
        if not (isinstance(n, int) and 1 <= n <= 50 and isinstance(seq_len, int) and seq_len >= 8):
            raise UserInputError("'n' must be 1..50 and 'seq_len' at least 8")
        path = ws.resolve(file) if file else None
        if path is not None and not path.is_file():
            raise UserInputError(f"{file}: no such file in the workspace")
        return in_workspace(await asyncio.to_thread(tools.masking_preview, path, model, n, seq_len))

    # -- compare, chat, export --------------------------------------------------------------
    @app.post("/api/compare")
    async def compare(request: Request):
        names = (await body(request)).get("runs")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserInputError("'runs' must be a list of run names")
        picked = [ws.run(n) for n in names[:12]]
        return await asyncio.to_thread(tools.compare_runs, picked)

    @app.post("/api/chat/load")
    async def chat_load(request: Request):
        run = ws.run(text(await body(request), "name"))
        if not run.is_finished():
            raise UserInputError(
                f"{run.path.name} has not finished training; chat needs its result"
            )
        # A base the run recorded relative to the workspace (models/x), as the trainer ran there.
        local = ws.root / run.config.model
        base = str(local) if run.config.model != "embedded" and local.exists() else None
        return await asyncio.to_thread(chat.load, run, base)

    @app.post("/api/export")
    async def export(request: Request):
        data = await body(request)
        run = ws.run(text(data, "name"))
        fmt = text(data, "format", required=False, default="merged")
        return await asyncio.to_thread(tools.export_run, ws, run, fmt)
