"""URL routes (ROOT_URLCONF). The predict and status paths are TF Serving's, for model "xray"."""

from django.urls import path

from xray_tfdata.serving.web import views

urlpatterns = [
    path("", views.index, name="index"),
    path("v1/models/xray:predict", views.model_predict, name="predict"),
    path("v1/models/xray:explain", views.model_explain, name="explain"),
    path("v1/models/xray", views.model_status, name="model_status"),
    path("v1/models/xray/metadata", views.model_metadata, name="model_metadata"),
    path("healthz", views.healthz, name="healthz"),
    path("static/<str:name>", views.static, name="static"),
]

# Refusals Django raises itself (a Host not in --allowed_hosts, an unknown path, a crash) answer
# in the same JSON shape as the views' own errors.
handler400 = "xray_tfdata.serving.web.views.bad_request"
handler404 = "xray_tfdata.serving.web.views.not_found"
handler500 = "xray_tfdata.serving.web.views.server_error"
