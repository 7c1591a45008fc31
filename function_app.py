"""Composition root: the Function App and its blueprints, nothing else."""

import azure.functions as func

from functions import admin_api, clusters_api, lifecycle, utilization

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(clusters_api.bp)
app.register_functions(lifecycle.bp)
app.register_functions(admin_api.bp)
app.register_functions(utilization.bp)
