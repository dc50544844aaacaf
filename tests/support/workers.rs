//! A test app's workers: in process, or the real binary as a child process, configured alike.

use tokio_util::sync::CancellationToken;

use crate::{app::TestApp, config::amqp_url, config::test_secrets, fake_sms};

impl TestApp {
    pub async fn start_worker(&mut self) {
        assert!(self.worker_task.is_none(), "worker already running");
        self.worker_shutdown = CancellationToken::new();
        let worker = self.build_worker().await;
        self.worker_addr = Some(worker.local_addr());
        let stop = self.worker_shutdown.clone();
        self.worker_task = Some(tokio::spawn(async move {
            worker.run_until_stopped(stop).await.unwrap();
        }));
    }

    /// The environment that makes a `msgcontact-worker` process equal to `build_worker`'s worker.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let o = &self.options;
        [
            ("MSGCONTACT_DATABASE_URL", self.db_url.clone()),
            (
                "MSGCONTACT_AMQP_URL",
                o.amqp_url.clone().unwrap_or_else(amqp_url),
            ),
            (
                "MSGCONTACT_BROKER_RECOVERY_TIMEOUT_SECS",
                o.broker_recovery_timeout_secs.to_string(),
            ),
            ("MSGCONTACT_QUEUE_PREFIX", self.prefix.clone()),
            (
                "MSGCONTACT_QUEUE_MAX_LENGTH",
                o.queue_max_length.to_string(),
            ),
            ("MSGCONTACT_RETRY_DELAYS_SECS", o.retry_delays.into()),
            ("MSGCONTACT_DATABASE_POOL", "8".into()),
            ("MSGCONTACT_SUPPORTED_COUNTRY_CODES", "86".into()),
            ("MSGCONTACT_DAILY_LIMIT", o.daily_limit.to_string()),
            (
                "MSGCONTACT_RESEND_COOLDOWN_SECS",
                o.cooldown_secs.to_string(),
            ),
            ("MSGCONTACT_CODE_TTL_SECS", o.code_ttl_secs.to_string()),
            ("MSGCONTACT_WORKER_LISTEN", "127.0.0.1:0".into()),
            (
                "MSGCONTACT_SMS_PROVIDER",
                if o.aliyun { "aliyun" } else { "webhook" }.into(),
            ),
            (
                "MSGCONTACT_WEBHOOK_URL",
                format!("http://{}/sms", self.inbox_addr),
            ),
            ("MSGCONTACT_WEBHOOK_SECRET", self.webhook_secret.clone()),
            ("MSGCONTACT_ALIYUN_SMS_ENDPOINT", self.sms.addr.to_string()),
            ("MSGCONTACT_ALIYUN_SMS_PROTOCOL", "http".into()),
            (
                "MSGCONTACT_ALIYUN_ACCESS_KEY_ID",
                fake_sms::ACCESS_KEY_ID.into(),
            ),
            (
                "MSGCONTACT_ALIYUN_ACCESS_KEY_SECRET",
                fake_sms::ACCESS_KEY_SECRET.into(),
            ),
            ("MSGCONTACT_ALIYUN_SMS_SIGN_NAME", "msgcontact".into()),
            ("MSGCONTACT_ALIYUN_SMS_TEMPLATE_CODE", "SMS_0001".into()),
            ("MSGCONTACT_PROVIDER_RATE", "1000".into()),
            ("MSGCONTACT_WORKER_COUNT", o.worker_count.to_string()),
            ("MSGCONTACT_PHONE_BURST", o.phone_burst.to_string()),
            (
                "MSGCONTACT_PHONE_PER_MINUTE",
                o.phone_per_minute.to_string(),
            ),
            (
                "MSGCONTACT_PROVIDER_TIMEOUT_MS",
                o.provider_timeout_ms.to_string(),
            ),
            ("MSGCONTACT_LOG_FORMAT", "json".into()),
            ("MSGCONTACT_PREFETCH", "16".into()),
            (
                "MSGCONTACT_MASTER_KEY",
                test_secrets(&self.prefix).master_key.unwrap(),
            ),
            (
                "MSGCONTACT_CODE_SECRET",
                test_secrets(&self.prefix).code_secret.unwrap(),
            ),
        ]
        .into_iter()
        .chain(
            o.provider_total_rate
                .map(|r| ("MSGCONTACT_PROVIDER_TOTAL_RATE", r.to_string())),
        )
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Starts the real worker binary as a child process (so it can be SIGKILLed), with
    /// `extra` overriding the environment.
    pub fn spawn_worker_process(
        &self,
        binary: &str,
        extra: &[(&str, &str)],
    ) -> std::process::Child {
        let mut cmd = std::process::Command::new(binary);
        cmd.envs(self.worker_env());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.stderr(std::process::Stdio::null());
        }
        cmd.stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the worker binary")
    }

    /// Like [`Self::spawn_worker_process`], with everything it prints (at `debug`) in `log`.
    pub fn spawn_worker_process_logged(
        &self,
        binary: &str,
        extra: &[(&str, &str)],
        log: &std::path::Path,
    ) -> std::process::Child {
        let out = std::fs::File::create(log).expect("create the log file");
        std::process::Command::new(binary)
            .envs(self.worker_env())
            .envs(extra.iter().copied())
            .env("RUST_LOG", "debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the worker binary")
    }

    /// The environment giving a process this test's secrets.
    pub fn secrets_env(&self) -> [(&'static str, String); 2] {
        let s = test_secrets(&self.prefix);
        [
            ("MSGCONTACT_MASTER_KEY", s.master_key.unwrap()),
            ("MSGCONTACT_CODE_SECRET", s.code_secret.unwrap()),
        ]
    }

    /// One more worker process (the same code and configuration), stopped with the first one.
    pub async fn start_extra_worker(&mut self) {
        let worker = self.build_worker().await;
        let stop = self.worker_shutdown.clone();
        self.extra_workers.push(tokio::spawn(async move {
            worker.run_until_stopped(stop).await.unwrap();
        }));
    }

    /// The worker's settings, read from [`Self::worker_env`] as the binary reads its environment
    /// (each `MSGCONTACT_X_Y` is the flag `--x-y`), so both kinds of worker run alike.
    async fn build_worker(&self) -> msgcontact_worker::Application {
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            config: msgcontact_worker::Config,
        }
        let flags = self.worker_env().into_iter().map(|(name, value)| {
            let flag = name
                .trim_start_matches("MSGCONTACT_")
                .to_ascii_lowercase()
                .replace('_', "-");
            format!("--{flag}={value}")
        });
        let args = <Args as clap::Parser>::try_parse_from(
            std::iter::once("msgcontact-worker".to_owned()).chain(flags),
        )
        .expect("the test's worker settings parse");
        msgcontact_worker::Application::build(args.config)
            .await
            .expect("worker failed to start")
    }

    pub async fn stop_worker(&mut self) {
        self.worker_shutdown.cancel();
        if let Some(t) = self.worker_task.take() {
            t.await.unwrap();
        }
        for t in self.extra_workers.drain(..) {
            t.await.unwrap();
        }
    }
}
