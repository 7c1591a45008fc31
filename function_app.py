"""Composition root: the Function App and its blueprints, nothing else."""

import azure.functions as func

import functions.jobs_api as jobs_api
from functions import (
    admin_api,
    agent_api,
    clusters_api,
    console,
    files_api,
    lifecycle,
    pools_api,
    utilization,
)

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(clusters_api.bp)
app.register_functions(lifecycle.bp)
app.register_functions(admin_api.bp)
app.register_functions(utilization.bp)
app.register_functions(jobs_api.bp)
app.register_functions(pools_api.bp)
app.register_functions(files_api.bp)
app.register_functions(agent_api.bp)
app.register_functions(console.bp)
