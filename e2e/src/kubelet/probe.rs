//! Readiness, liveness and startup probes: one attempt of a probe, and the
//! thresholds and timing around attempts, with the kubelet's defaults
//! (pkg/apis/core/v1/defaults.go `SetDefaults_Probe`, pkg/probe/http).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// How a probe's checks are spread and judged.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Schedule {
    pub fn of(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, default: u64, min: u64| {
            Duration::from_secs(v.map_or(default, |s| s.max(0) as u64).max(min))
        };
        let count = |v: Option<i32>, default: u32| v.map_or(default, |n| n.max(1) as u32);
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0, 0),
            period: secs(probe.period_seconds, 10, 1),
            timeout: secs(probe.timeout_seconds, 1, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// What one attempt found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// The consecutive-result counting of one probe on one container run.
#[derive(Debug)]
pub struct Prober {
    pub kind: &'static str,
    probe: Probe,
    pub schedule: Schedule,
    pub next: Instant,
    successes: u32,
    failures: u32,
}

/// A probe's verdict after an attempt crossed a threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed(String),
}

impl Prober {
    pub fn new(kind: &'static str, probe: &Probe, started: Instant) -> Self {
        let schedule = Schedule::of(probe);
        Self {
            kind,
            probe: probe.clone(),
            next: started + schedule.initial_delay,
            schedule,
            successes: 0,
            failures: 0,
        }
    }

    /// Runs one attempt against `pod_ip` and reports a verdict when a
    /// threshold is reached (every attempt past it reports again).
    pub async fn attempt(&mut self, container: &Container, pod_ip: IpAddr) -> (Outcome, Option<Verdict>) {
        let outcome = run(&self.probe, container, pod_ip, self.schedule.timeout).await;
        self.next = Instant::now() + self.schedule.period;
        let verdict = match &outcome {
            Outcome::Success => {
                self.failures = 0;
                self.successes += 1;
                (self.successes >= self.schedule.success_threshold).then_some(Verdict::Passed)
            }
            Outcome::Failure(why) => {
                self.successes = 0;
                self.failures += 1;
                (self.failures >= self.schedule.failure_threshold).then(|| Verdict::Failed(why.clone()))
            }
        };
        (outcome, verdict)
    }
}

/// One attempt of `probe`.
pub async fn run(probe: &Probe, container: &Container, pod_ip: IpAddr, limit: Duration) -> Outcome {
    if let Some(get) = &probe.http_get {
        if get.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
            return Outcome::Failure("HTTPS probes are not supported by the kubelet stand-in".into());
        }
        let addr = match target(get.host.as_deref(), &get.port, container, pod_ip) {
            Ok(addr) => addr,
            Err(why) => return Outcome::Failure(why),
        };
        let path = get.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
        let headers: Vec<(String, String)> =
            get.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        match timeout(limit, http_get(addr, path, &headers)).await {
            Err(_) => Outcome::Failure(format!("Get \"http://{addr}{path}\": timeout after {limit:?}")),
            Ok(Err(e)) => Outcome::Failure(format!("Get \"http://{addr}{path}\": {e}")),
            Ok(Ok(code)) if (200..400).contains(&code) => Outcome::Success,
            Ok(Ok(code)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        let addr = match target(tcp.host.as_deref(), &tcp.port, container, pod_ip) {
            Ok(addr) => addr,
            Err(why) => return Outcome::Failure(why),
        };
        match timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {e}")),
            Err(_) => Outcome::Failure(format!("dial tcp {addr}: timeout after {limit:?}")),
        }
    } else if probe.exec.is_some() || probe.grpc.is_some() {
        Outcome::Failure("exec and gRPC probes are not supported by the kubelet stand-in".into())
    } else {
        Outcome::Failure("the probe has no handler".into())
    }
}

/// The address a probe dials: its host or the pod IP, its port by number or
/// by the container port's name.
fn target(
    host: Option<&str>,
    port: &IntOrString,
    container: &Container,
    pod_ip: IpAddr,
) -> Result<SocketAddr, String> {
    let ip = match host.filter(|h| !h.is_empty()) {
        None => pod_ip,
        Some("localhost") => IpAddr::from([127, 0, 0, 1]),
        Some(h) => h.parse().map_err(|_| format!("probe host {h:?} is not an IP address"))?,
    };
    let port = match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("probe port {n} is out of range"))?,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container {} has no port named {name:?}", container.name))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// A plain HTTP/1.1 GET; the response's status code.
async fn http_get(addr: SocketAddr, path: &str, headers: &[(String, String)]) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/kiln-stand-in\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed HTTP response {line:?}"))
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction};
    use tokio::net::TcpListener;

    use super::*;

    fn container() -> Container {
        Container {
            name: "kilnd".into(),
            ports: Some(vec![ContainerPort {
                name: Some("debug".into()),
                container_port: 6060,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_the_kubelets() {
        let s = Schedule::of(&Probe::default());
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
        let s = Schedule::of(&Probe {
            period_seconds: Some(0),
            failure_threshold: Some(1),
            ..Default::default()
        });
        assert_eq!(s.period, Duration::from_secs(1));
        assert_eq!(s.failure_threshold, 1);
    }

    #[test]
    fn targets_resolve_named_ports_and_default_to_the_pod_ip() {
        let ip = IpAddr::from([127, 0, 0, 12]);
        let c = container();
        assert_eq!(
            target(None, &IntOrString::String("debug".into()), &c, ip),
            Ok("127.0.0.12:6060".parse().unwrap())
        );
        assert_eq!(
            target(Some("127.0.0.1"), &IntOrString::Int(80), &c, ip),
            Ok("127.0.0.1:80".parse().unwrap())
        );
        let err = target(None, &IntOrString::String("grpc".into()), &c, ip).unwrap_err();
        assert!(err.contains("no port named \"grpc\""), "{err}");
        assert!(target(None, &IntOrString::Int(70_000), &c, ip).is_err());
    }

    /// Serves one canned response per connection on a loopback port.
    async fn serve(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
        });
        port
    }

    fn http_probe(port: u16) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(i32::from(port)),
                ..Default::default()
            }),
            failure_threshold: Some(2),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn http_probes_judge_the_status_code() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let ok = serve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let unavailable = serve("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let c = container();
        assert_eq!(run(&http_probe(ok), &c, ip, Duration::from_secs(1)).await, Outcome::Success);
        assert_eq!(
            run(&http_probe(unavailable), &c, ip, Duration::from_secs(1)).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let Outcome::Failure(why) = run(&http_probe(closed), &c, ip, Duration::from_secs(1)).await else {
            panic!("a closed port passed");
        };
        assert!(why.contains("/readyz"), "{why}");
    }

    #[tokio::test]
    async fn thresholds_count_consecutive_results() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let unavailable = serve("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let mut prober = Prober::new("readiness", &http_probe(unavailable), Instant::now());
        let c = container();
        assert_eq!(prober.attempt(&c, ip).await.1, None);
        assert_eq!(
            prober.attempt(&c, ip).await.1,
            Some(Verdict::Failed("HTTP probe failed with statuscode: 503".into()))
        );
    }
}
