# The portal's Japanese pages. Wording follows the Japanese product page of the
# Configuration Manager BitLocker self-service portal where it has one (回復キー ID, 理由,
# キーの取得, BitLocker 回復キー, タイムアウト警告, セッションの期限切れ).

lang-name = 日本語
lang-switch = 言語

site-selfservice = BitLocker セルフサービス ポータル
site-helpdesk = BitLocker ヘルプ デスク
site-admin = 回復ポータルの管理

title-notice = 通知
title-get-key = BitLocker 回復キーの取得
title-expired = セッションの期限切れ

sign-out = サインアウト

idle-title = タイムアウト警告
idle-before = 非アクティブな状態が続いています。セッションは残り
idle-after = 秒で期限切れになります。
idle-continue = 続行

login-username = ユーザー名
login-password = パスワード
login-sign-in = サインイン

notice-intro = 通知を読み、同意してください。
notice-accept = 同意する

ss-instructions = デバイスの BitLocker 回復画面に表示される 32 桁の BitLocker 回復キー ID の最初の 8 桁を入力し、理由を選択して [キーの取得] を選択します。
ss-key-id = 回復キー ID
ss-key-id-hint = 回復画面に表示される 32 桁の ID の最初の 8 桁。複数のキーが一致する場合は、32 桁すべてを入力します。
ss-reason = 理由
ss-reason-choose = 理由を選択してください
ss-get-key = キーの取得
ss-matches = 入力した数字で始まる回復キーが複数あります。回復キー ID の 32 桁すべてを入力してください。
ss-helpdesk = このデバイスにローカルでサインインしたことがないため、ここではこのキーを取得できません。
ss-key-heading = BitLocker 回復キー
ss-key-for = 回復キー ID
ss-key-on = デバイス
ss-key-use = この 48 桁のコードを、お使いのコンピューターの BitLocker 回復画面に入力してください。このキーは 1 回だけ使用でき、使用後はデバイスによって置き換えられます。

reason-bios-tpm = BIOS/TPM の変更
reason-os-files = OS ファイルの変更
reason-lost-pin = PIN/パスフレーズの紛失

err-key-id = key_id: 回復キー ID は、最初の 8 桁または 32 桁すべての 16 進数で入力してください。
err-reason = reason: 一覧から理由を選択してください。
err-not-found = この回復キー ID に一致する回復キーはありません。回復画面の数字を確認してください。
err-foreign = この回復キーは、あなたが関連付けられていないデバイスのものです。
err-rate-limited = キーの要求に失敗した回数が多すぎます。しばらくしてからやり直すか、ヘルプ デスクに連絡してください。
err-credentials = ユーザー名またはパスワードが正しくありません。
err-sign-in-throttled = サインインの失敗が多すぎます。{ $seconds } 秒待ってからもう一度お試しください。
err-username = ユーザー名を入力してください (128 文字以内)。
err-password = パスワードを入力してください (1024 文字以内)。
err-role = このアカウントではこのサイトを使用できません。
err-csrf = CSRF トークンがないか、正しくありません。
err-csrf-login = CSRF トークンがないか、正しくありません。サインイン ページを再読み込みしてください。
err-too-large = フォームが大きすぎるため送信できません。

expired-text = 非アクティブな状態が一定期間続いたため、セッションの期限が切れました。
expired-again = もう一度サインインする
back = 戻る
