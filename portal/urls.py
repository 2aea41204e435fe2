"""Portal pages (mounted at "/")."""

from django.urls import path

from portal.views import (
    account,
    agency,
    auth,
    bank,
    card_life,
    citizen,
    code_signing,
    fleet,
    manufacturer,
    oversight,
    pages,
    personalization,
    renewals,
    repair,
    rollouts,
    terminals,
)

app_name = "portal"

urlpatterns = [
    path("", pages.home, name="home"),
    # Authentication (the rest of django.contrib.auth.urls stays under /accounts/)
    path("accounts/login/", auth.PortalLoginView.as_view(), name="login"),
    path("accounts/login/verify/", auth.login_verify, name="login-verify"),
    path("accounts/password_reset/", auth.PortalPasswordResetView.as_view(), name="password-reset"),
    path("account/second-factor/", auth.second_factor, name="second-factor"),
    path("account/invitations/", account.invitations, name="invitations"),
    path("account/e-mail/", account.email_preferences, name="email-preferences"),
    path("account/invitations/<int:invitation>/", account.answer_invitation, name="invitation-answer"),
    # Citizen
    path("card/", citizen.my_card, name="my-card"),
    path("card/connect/", citizen.connect, name="connect"),
    path("card/<str:cin>/", citizen.card_detail, name="card"),
    path("card/<str:cin>/add-bank/", citizen.add_bank, name="add-bank"),
    path("card/<str:cin>/add-bank/<slug:bank>/", citizen.add_bank_consent, name="add-bank-consent"),
    path("card/<str:cin>/remove/<int:enrollment>/", citizen.remove_bank, name="remove-bank"),
    path("card/<str:cin>/renew/", renewals.renew_card, name="renew-card"),
    path("card/<str:cin>/report-loss/", card_life.report_loss, name="report-loss"),
    # Bank
    path("bank/<slug:bank>/", bank.dashboard, name="bank"),
    path("bank/<slug:bank>/notices/", card_life.notices, name="bank-notices"),
    path("bank/<slug:bank>/keys/", bank.keys, name="bank-keys"),
    path("bank/<slug:bank>/keys/rotate/<int:sd>/", bank.rotate, name="bank-rotate"),
    path("bank/<slug:bank>/key-service/check/", bank.key_service_check, name="bank-key-service-check"),
    path("bank/<slug:bank>/key-service/rotate-oce/", bank.key_service_rotate, name="bank-key-service-rotate"),
    path("bank/<slug:bank>/releases/", bank.releases, name="bank-releases"),
    path("bank/<slug:bank>/releases/<int:release>/", bank.release_detail, name="bank-release"),
    path("bank/<slug:bank>/template/", fleet.template, name="bank-template"),
    path("bank/<slug:bank>/cards/", fleet.cards, name="bank-cards"),
    path("bank/<slug:bank>/cards/<str:cin>/", fleet.card, name="bank-card"),
    path("bank/<slug:bank>/cards/<str:cin>/<slug:action>/", fleet.card_action, name="bank-card-action"),
    path("bank/<slug:bank>/releases/<int:release>/revoke/", fleet.revoke, name="bank-release-revoke"),
    path("bank/<slug:bank>/rollouts/install/", fleet.install_campaign, name="bank-install-campaign"),
    path("bank/<slug:bank>/rollouts/rotate-keys/", fleet.rotate_campaign, name="bank-rotate-campaign"),
    path(
        "bank/<slug:bank>/releases/<int:release>/dap-signature/",
        code_signing.release_signature,
        name="bank-release-signature",
    ),
    path("bank/<slug:bank>/dap-key/", code_signing.bank_dap_key, name="bank-dap-key"),
    path("bank/<slug:bank>/personalization/", personalization.upload, name="bank-personalization"),
    path("bank/<slug:bank>/rollouts/", rollouts.rollout_list, name="bank-rollouts"),
    path("bank/<slug:bank>/rollouts/<int:rollout>/", rollouts.rollout_detail, name="bank-rollout"),
    path("bank/<slug:bank>/rollouts/<int:rollout>/cards/", rollouts.rollout_targets, name="bank-rollout-targets"),
    # Agency
    path("agency/", agency.dashboard, name="agency"),
    path("agency/cards/", agency.cards, name="agency-cards"),
    path("agency/cards/issue/", agency.issue, name="agency-issue"),
    path("agency/cards/batch/", agency.issue_batch, name="agency-batch"),
    path("agency/cards/manufacturer-files/", manufacturer.manufacturer_files, name="agency-manufacturer-files"),
    path("agency/cards/<str:cin>/", agency.card_detail, name="agency-card"),
    path("agency/cards/<str:cin>/repair/", repair.card_repair, name="agency-card-repair"),
    path("agency/cards/<str:cin>/<slug:action>/", card_life.agency_card_action, name="agency-card-action"),
    path("agency/banks/", agency.banks, name="agency-banks"),
    path("agency/banks/<slug:bank>/", agency.bank_detail, name="agency-bank"),
    path("agency/policy/", agency.policy, name="agency-policy"),
    path("agency/renewals/", renewals.renewals, name="agency-renewals"),
    path("agency/renewals/<int:rollout>/", renewals.renewal_detail, name="agency-renewal"),
    path("agency/releases/", code_signing.agency_releases, name="agency-releases"),
    path("agency/code-signing/", code_signing.agency_code_signing, name="agency-code-signing"),
    # Terminal credentials of an organisation (its admins)
    path("org/<slug:org>/terminals/", terminals.terminals, name="terminals"),
    # Regulator
    path("regulator/", pages.regulator, name="regulator"),
    path("regulator/reports/", oversight.report_list, name="oversight-reports"),
    path("regulator/reports/<slug:report>.csv", oversight.report_csv, name="oversight-report-csv"),
    path("regulator/card/", oversight.card_at, name="oversight-card"),
]
