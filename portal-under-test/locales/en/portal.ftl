# The portal's English pages. Message ids are shared with locales/ja/portal.ftl; a message
# missing there falls back to this file.

lang-name = English
lang-switch = Language

site-selfservice = BitLocker Recovery Key Self-Service
site-helpdesk = BitLocker Help Desk
site-admin = Recovery Portal Administration

title-notice = Notice
title-get-key = Get your BitLocker recovery key
title-expired = Session expired

sign-out = Sign out

idle-title = Timeout warning
idle-before = You have been inactive. Your session will end in
idle-after = seconds.
idle-continue = Continue

login-username = User name
login-password = Password
login-sign-in = Sign in

notice-intro = Read the notice and accept it to continue.
notice-accept = Accept

ss-instructions = Type the first 8 digits of the Recovery Key ID shown on your device's BitLocker recovery screen, choose a reason and select Get Key.
ss-key-id = Recovery Key ID
ss-key-id-hint = The first 8 digits of the 32-digit ID on the recovery screen; all 32 if several keys match.
ss-reason = Reason
ss-reason-choose = Select a reason
ss-get-key = Get Key
ss-matches = Several of your recovery keys start with these digits. Type all 32 digits of the Recovery Key ID.
ss-helpdesk = You cannot get this key here because you have not signed in to this device locally.
ss-key-heading = BitLocker recovery key
ss-key-for = Recovery key for key ID
ss-key-on = on
ss-key-use = Type this key on the BitLocker recovery screen. It can be used once; your device will replace it.

# The reasons' values are the product's exact English labels (API.md §6); these are the
# texts shown for them.
reason-bios-tpm = BIOS/TPM changed
reason-os-files = OS filed modified
reason-lost-pin = Lost PIN/passphrase

err-key-id = key_id { $detail }
err-reason = reason must be one of the listed reasons
err-not-found = No recovery key matches this Recovery Key ID. Check the digits on the recovery screen.
err-foreign = This recovery key belongs to a device you are not associated with.
err-rate-limited = Too many failed key requests. Try again later or contact your help desk.
err-credentials = The user name or password is incorrect.
err-sign-in-throttled = Too many failed sign-ins. Wait { $seconds } seconds and try again.
err-username = username is required (at most 128 characters)
err-password = password is required (at most 1024 characters)
err-role = Your account may not use this site.
err-csrf = Missing or wrong CSRF token.
err-csrf-login = Missing or wrong CSRF token. Reload the sign-in page.
err-too-large = The form is too large to send.

expired-text = Your session has expired because of inactivity.
expired-again = Sign in again
back = Back
