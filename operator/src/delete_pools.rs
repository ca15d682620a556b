//! `kiln delete-pools`: deletes the Builders a label selector names and
//! waits until they are gone, while the controller drains them (running
//! builds finish, then the controller lifts its finalizer).
//!
//! The chart runs it as a pre-delete hook: `helm uninstall` deletes the
//! controller together with the pools, so a pool deleted by Helm would keep
//! its finalizer forever. Deleted first, while the controller runs, the
//! pools go the way a `kubectl delete builder` goes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kiln_crds::Builder;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt as _};
use tracing::info;

/// Delete the Builders a selector names and wait until they are gone.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example, the pools of the release `kiln`, as the chart's pre-delete hook runs it:

  kiln delete-pools --selector app.kubernetes.io/instance=kiln --namespace kiln

Needs a running controller: it drains each builder (running builds finish)
and then lets the Builder go.")]
pub struct Args {
    /// The Builders to delete, as a label selector (never empty: it would
    /// name every pool).
    #[arg(long, short = 'l', value_name = "SELECTOR", value_parser = non_empty)]
    pub selector: String,

    /// A namespace to look in; repeat for several. None: every namespace.
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Vec<String>,

    /// How long to wait for the Builders to go before failing.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub timeout: u64,
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("an empty selector would name every Builder".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

/// What made `kiln delete-pools` fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the Kubernetes API (KUBECONFIG or the in-cluster service account): {0}")]
    Client(#[source] kube::Error),
    #[error("listing Builders ({selector}) {scope}: {source}")]
    List { selector: String, scope: String, source: kube::Error },
    #[error("deleting Builder {name}: {source}")]
    Delete { name: String, source: kube::Error },
    #[error(
        "after {seconds} s these Builders are still there: {left} (is the controller running? It drains \
         them and lifts their finalizer; `kubectl get builders -A` shows their phase)"
    )]
    Timeout { seconds: u64, left: String },
}

/// The Builders' APIs, one a namespace, or one for all of them.
fn apis(client: &kube::Client, namespaces: &[String]) -> Vec<(String, Api<Builder>)> {
    if namespaces.is_empty() {
        return vec![("in every namespace".to_owned(), Api::all(client.clone()))];
    }
    let unique: BTreeSet<&String> = namespaces.iter().collect();
    unique.into_iter().map(|ns| (format!("in namespace {ns}"), Api::namespaced(client.clone(), ns))).collect()
}

/// NAMESPACE/NAME of every Builder the selector names.
async fn list(apis: &[(String, Api<Builder>)], selector: &str) -> Result<Vec<(String, String)>, Error> {
    let mut found = Vec::new();
    for (scope, api) in apis {
        let builders = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|source| Error::List { selector: selector.to_owned(), scope: scope.clone(), source })?;
        found.extend(builders.into_iter().map(|b| (b.namespace().unwrap_or_default(), b.name_any())));
    }
    Ok(found)
}

/// `kiln delete-pools`.
pub async fn run(args: Args) -> Result<(), Error> {
    let client = kube::Client::try_default().await.map_err(Error::Client)?;
    let apis = apis(&client, &args.namespace);
    let start = Instant::now();
    let builders = list(&apis, &args.selector).await?;
    if builders.is_empty() {
        info!(selector = %args.selector, "no Builders to delete");
        return Ok(());
    }
    for (ns, name) in &builders {
        let api: Api<Builder> = Api::namespaced(client.clone(), ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => info!(builder = %format!("{name}.{ns}"), "deleting"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => return Err(Error::Delete { name: format!("{ns}/{name}"), source }),
        }
    }
    let timeout = Duration::from_secs(args.timeout);
    let mut waiting_for = Vec::new();
    loop {
        let left = list(&apis, &args.selector).await?;
        if left.is_empty() {
            info!(count = builders.len(), seconds = start.elapsed().as_secs(), "every Builder is gone");
            return Ok(());
        }
        let names: Vec<String> = left.iter().map(|(ns, name)| format!("{name}.{ns}")).collect();
        if start.elapsed() >= timeout {
            return Err(Error::Timeout { seconds: args.timeout, left: names.join(", ") });
        }
        if names != waiting_for {
            info!(left = %names.join(", "), "waiting while the controller drains");
            waiting_for = names;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
