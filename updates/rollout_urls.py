"""Routes of releases and rollouts (included by ``updates.urls``)."""

from rest_framework.routers import SimpleRouter

from updates import rollout_apis

router = SimpleRouter()
router.register("releases", rollout_apis.ReleaseViewSet, basename="release")
router.register("rollouts", rollout_apis.RolloutViewSet, basename="rollout")

urlpatterns = router.urls
