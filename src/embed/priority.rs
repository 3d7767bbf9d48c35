//! The priority a piece of work runs at, as a tokio task-local around it: work run inside
//! [`background`] (the Batch API's lines, `jobs/`) submits its rows to the batchers' background
//! queue, which runs only when no live row waits, so bulk work never starves live calls. Everything
//! else (both doors' calls) is live. The same embedding code runs either way, so an answer does not
//! depend on its priority.

use std::future::Future;

tokio::task_local! {
    static BACKGROUND: ();
}

/// Runs `work` at the lowest priority: every batcher submission inside it waits behind live rows.
pub async fn background<F: Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

/// Whether the running task is inside [`background`].
pub fn is_background() -> bool {
    BACKGROUND.try_with(|()| ()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_work_inside_the_scope_is_background() {
        assert!(!is_background());
        assert!(background(async { is_background() }).await);
        assert!(!is_background());
    }
}
